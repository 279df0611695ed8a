"""Every command's flags are its config's fields, with the same defaults; --config and --set work everywhere."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer
from typer.testing import CliRunner

from batchrec import flags
from batchrec.data.download import DownloadConfig
from batchrec.data.prepare import PrepareConfig
from batchrec.data.synth import SynthConfig
from batchrec.evaluate import EvaluateConfig
from batchrec.index import IndexBuildConfig
from batchrec.score import ScoreConfig
from batchrec.train import TrainConfig
from cli import app

runner = CliRunner()
COMMANDS = {
    ("data", "prepare"): PrepareConfig,
    ("data", "synth"): SynthConfig,
    ("data", "download"): DownloadConfig,
    ("train",): TrainConfig,
    ("evaluate",): EvaluateConfig,
    ("score",): ScoreConfig,
    ("index", "build"): IndexBuildConfig,
}
NOT_CONFIG = {"config", "set_", "as_json", "help"}


def _command(path: tuple[str, ...]):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_flags_are_the_config_fields_with_their_defaults(path):
    cls = COMMANDS[path]
    params = {p.name: p for p in _command(path).params if p.name not in NOT_CONFIG}
    fields = {
        f.name: f
        for f in dataclasses.fields(cls)
        if typing.get_origin(typing.get_type_hints(cls)[f.name]) is not dict
    }
    assert set(params) == set(fields)
    defaults = cls(**{f.name: "x" for f in fields.values() if f.default is dataclasses.MISSING and not (
        f.default_factory is not dataclasses.MISSING)})  # fmt: skip
    for name, param in params.items():
        if param.required:
            continue
        want = getattr(defaults, name)
        assert param.default == want or (param.default in ((), None) and want in ([], None)), name
        assert param.help, f"--{name} has no help: give the field a comment"


def test_help_comes_from_the_field_comments():
    @dataclasses.dataclass
    class Example:
        # what it is,
        # on two lines
        a: int = 1  # and a trailing note
        b: str = "x#y"  # a '#' in a string is not a comment
        c: dict = dataclasses.field(default_factory=dict)

    assert flags.field_help(Example) == {
        "a": "what it is, on two lines and a trailing note",
        "b": "a '#' in a string is not a comment",
        "c": "",
    }


def test_config_file_then_flags_then_set(tmp_path):
    seen = []
    app_ = typer.Typer()
    app_.command()(flags.command(SynthConfig, seen.append, doc="synth"))
    (tmp_path / "c.yaml").write_text("users: 10\nitems: 20\nseed: 3\n")
    args = ["--config", str(tmp_path / "c.yaml"), "--items", "30", "--set", "seed=4"]
    res = runner.invoke(app_, args)
    assert res.exit_code == 0, res.output
    # the file's users stay (a flag left at its default does not undo the file)
    assert (seen[0].users, seen[0].items, seen[0].seed) == (10, 30, 4)


def test_every_problem_of_the_command_line_at_once():
    res = runner.invoke(app, ["train", "--epochs", "0", "--loss", "hinge", "--set", "colour=red"])
    assert res.exit_code == 2
    for problem in ("colour: unknown key", "loss: 'hinge' is not one of", "epochs must be ≥ 1"):
        assert problem in res.output
