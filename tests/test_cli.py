"""The CLI's conventions, each checked on the real `batchrec` app: --version; global options before or
after the subcommand; one environment variable per option a CronJob sets; one flag name per idea;
choices listed in --help; --quiet / --verbose; shell completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import batchrec
from cli import app

runner = CliRunner()


def batchrec_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchrec", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("BATCHREC_")}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def help_of(argv: list[str]) -> str:
    return runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "200"}).stdout


def commands() -> list[list[str]]:
    """Every leaf command of the app, as argv prefixes."""
    import typer.main

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += [[name, sub] for sub in cmd.commands]
        else:
            out.append([name])
    return out


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"batchrec {batchrec.__version__}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_are_accepted_before_or_after_the_subcommand(tmp_path, where):
    synth = ["data", "synth", "--users", "20", "--items", "10", "--out", str(tmp_path / "raw")]
    args = ["--log-format", "json", *synth] if where == "before" else [*synth, "--log-format", "json"]
    res = batchrec_cli(*args)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stderr.strip().splitlines()]
    assert lines and all({"ts", "level", "run_id", "stage", "msg"} <= set(line) for line in lines)


def test_quiet_and_verbose_set_the_log_level(tmp_path):
    synth = ["data", "synth", "--users", "20", "--items", "10"]
    quiet = batchrec_cli(*synth, "--out", str(tmp_path / "a"), "--quiet")
    normal = batchrec_cli(*synth, "--out", str(tmp_path / "b"))
    verbose = batchrec_cli("-v", *synth, "--out", str(tmp_path / "c"))
    assert quiet.returncode == normal.returncode == verbose.returncode == 0
    assert quiet.stderr == "" and "wrote" in normal.stderr
    assert quiet.stdout.strip() and quiet.stdout.strip().endswith("a")  # the result still prints
    both = batchrec_cli("-q", *synth, "--out", str(tmp_path / "d"), "-v")
    assert both.returncode == 2 and "--quiet and --verbose exclude each other" in both.stderr


def test_one_json_log_variable():
    res = batchrec_cli("data", "synth", "--users", "20", "--items", "10", "--out", os.devnull + ".d",
                       env={"BATCHREC_LOG_FORMAT": "json"})  # fmt: skip
    assert res.returncode == 0 and json.loads(res.stderr.splitlines()[0])["stage"]
    help_text = runner.invoke(app, ["--help"]).stdout
    assert (
        "BATCHREC_LOG_FORMAT" in help_text
        and "BATCHREC_LOG_JSON" not in help_text
        and "--log-json" not in help_text
    )


@pytest.mark.parametrize(
    ("flag", "var"),
    [("--date", "BATCHREC_DATE"), ("--workspace", "BATCHREC_WORKSPACE"), ("--ray-address", "RAY_ADDRESS")],
)
def test_one_environment_variable_per_option_everywhere(flag, var):
    found = 0
    for argv in commands():
        rows = [
            r
            for r in help_of(argv).splitlines()
            if re.search(rf"{flag}\b", r.split("│")[1] if "│" in r else "")
        ]
        for row in rows:
            found += 1
            assert f"[env var: {var}]" in row, (argv, row)
    assert found >= 2, flag


def test_one_flag_name_per_idea():
    texts = {" ".join(argv): help_of(argv) for argv in commands()}
    for name, text in texts.items():
        assert "--overwrite" not in text, f"{name}: replacing what is published is --force everywhere"
    assert "--force" in texts["run"] and "--force" in texts["data prepare"]
    # --k is one list length (score); evaluation's cutoffs are --ks, repeatable
    assert "--k " in texts["score"] and "--ks" in texts["evaluate"] and "--k " not in texts["evaluate"]


def test_choices_are_listed_in_help():
    train = help_of(["train"])
    for choices in ("ce|bce|sampled|inbatch", "auto|cpu|cuda", "history|none"):
        assert choices in train, choices
    res = runner.invoke(app, ["train", "--loss", "softmax"])
    assert res.exit_code == 2 and "'softmax' is not one of" in res.output


def test_shell_completion_is_available():
    # typer finds the shell among the command's ancestors, as from a user's terminal: run it from
    # bash, which does not exec the command away (the test runner's own ancestors may hold no
    # shell at all, e.g. under nohup)
    res = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m batchrec --show-completion; exit"],  # `; exit`: bash stays
        env={k: v for k, v in os.environ.items() if not k.startswith("BATCHREC_")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "_BATCHREC_COMPLETE=complete_bash" in res.stdout, res.stderr
    # and it completes: the subcommands after `batchrec t`
    env = {"COMP_WORDS": "batchrec t", "COMP_CWORD": "1", "_BATCHREC_COMPLETE": "complete_bash"}
    done = batchrec_cli(env=env)
    assert "train" in done.stdout.split(), done.stdout
