"""`batchrec run`: env expansion, artifact wiring, exit codes, skip-if-published, crash resume, gate."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from batchrec import pipeline, storage
from batchrec.errors import UserError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")
DATE = "2026-11-23"
# The quickstart job shrunk to seconds: same stages, tiny data, one epoch.
TINY = [
    "synth.users=150",
    "synth.items=40",
    "synth.avg_len=12",
    "train.epochs=1",
    "train.max_len=16",
    "train.dim=16",
    "score.k=5",
    "score.batch_size=50",
    "score.num_workers=1",
    "gate.beat_baseline=false",
]


def sets(pairs: list[str]) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def invoke(*args: str):
    import cli

    return CliRunner().invoke(cli.app, ["run", *args])


def test_env_expansion_defaults_and_reports_every_missing_variable(monkeypatch):
    monkeypatch.setenv("BR_SET", "s3://bucket/x")
    monkeypatch.delenv("BR_UNSET", raising=False)
    missing: list[str] = []
    got = pipeline.expand_env(
        {"a": "${BR_SET}/y", "b": ["${BR_UNSET:-dflt}", 3], "c": "${BR_UNSET:-}", "d": "$HOME-literal"},
        missing,
    )
    assert got == {"a": "s3://bucket/x/y", "b": ["dflt", 3], "c": "", "d": "$HOME-literal"}
    assert missing == []
    pipeline.expand_env({"a": "${BR_UNSET}", "b": {"c": "${BR_OTHER_UNSET}"}}, missing)
    assert missing == ["BR_UNSET", "BR_OTHER_UNSET"]


def test_load_wires_every_stage_to_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(tmp_path))
    job = pipeline.load(QUICKSTART, ["train.epochs=2"], DATE)
    run = f"{tmp_path}/runs/quickstart/dt={DATE}"
    out = f"{tmp_path}/outputs/sasrec"
    scored = f"{out}/_runs/dt={DATE}"
    assert job.train.epochs == 2 and job.date == DATE
    assert job.synth.out == f"{run}/raw" and job.prepare.input == f"{run}/raw"
    assert job.prepare.out == job.train.data == job.evaluate.data == job.score.data == f"{run}/prepared"
    assert job.train.out == job.evaluate.checkpoint == job.score.checkpoint == f"{run}/checkpoint"
    assert job.score.out == out and job.index.run == scored and job.index.out == f"{out}/index/dt={DATE}"
    assert job.score.date == DATE
    paths = pipeline.paths_of(job)
    assert (paths.run, paths.evaluate, paths.score, paths.index) == (
        run,
        f"{run}/evaluation",
        scored,
        f"{out}/index/dt={DATE}",
    )


def test_bad_job_files_exit_2_naming_every_problem(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [prepare, bogus]\ntrain:\n  epochz: 3\nprepare:\n  inputt: a\n")
    r = invoke(str(bad))
    assert r.exit_code == 2
    for needle in ("train.epochz: unknown key", "prepare.inputt: unknown key", "prepare.input: required"):
        assert needle in r.output
    with pytest.raises(UserError, match="BR_NOT_SET"):
        bad.write_text("name: x\nworkspace: ${BR_NOT_SET}\n")
        pipeline.load(str(bad))
    r = invoke(QUICKSTART, "--date", "23-11-2026")
    assert r.exit_code == 2 and "YYYY-MM-DD" in r.output and "23-11-2026" in r.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()


def read_sorted(url: str):
    t = storage.read_parquet(url)
    return t.take(
        pc.sort_indices(t, [("user_id" if "user_id" in t.column_names else "item_id", "ascending")])
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny quickstart run, shared by the tests that compare against it."""
    ws = tmp_path_factory.mktemp("ws")
    os.environ["BATCHREC_WORKSPACE"] = str(ws)
    try:
        r = invoke(QUICKSTART, "--date", DATE, *sets(TINY))
    finally:
        del os.environ["BATCHREC_WORKSPACE"]
    assert r.exit_code == 0, r.output
    for stage in ("synth", "prepare", "train", "evaluate", "score", "index"):
        assert any(line.startswith(f"{stage} ") and " ran " in line for line in r.output.splitlines()), (
            r.output
        )
    assert "gate      passed" in r.output
    return ws


@pytest.mark.slow
@pytest.mark.ray
def test_end_to_end_then_a_second_run_does_nothing(finished_run, monkeypatch):
    ws = finished_run
    out = ws / "outputs" / "sasrec" / "_runs" / f"dt={DATE}"
    assert (out / "_SUCCESS").exists() and (
        ws / "outputs" / "sasrec" / "index" / f"dt={DATE}" / "_SUCCESS"
    ).exists()
    manifest = storage.read_json(str(ws / "runs" / "quickstart" / f"dt={DATE}" / pipeline.RUN_MANIFEST))
    assert manifest["status"] == "ok" and manifest["config"]["name"] == "quickstart"
    assert [s["stage"] for s in manifest["stages"]] == [
        "synth",
        "prepare",
        "train",
        "evaluate",
        "gate",
        "score",
        "index",
    ]
    before = (out / "_SUCCESS").stat().st_mtime_ns
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(ws))
    t0 = time.monotonic()
    r = invoke(QUICKSTART, "--date", DATE, *sets(TINY))
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 20  # no Ray, no training: only reads of what is published
    lines = r.output.splitlines()
    for stage in ("synth", "prepare", "train", "evaluate", "score", "index"):
        assert any(line.startswith(f"{stage} ") and " skipped " in line for line in lines), r.output
    assert (out / "_SUCCESS").stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.ray
def test_run_killed_during_scoring_resumes_and_equals_an_uninterrupted_run(finished_run, tmp_path):
    # Start from the finished run's data, model and evaluation, so the new run's first real work is scoring.
    src = finished_run / "runs" / "quickstart" / f"dt={DATE}"
    dst = tmp_path / "runs" / "quickstart" / f"dt={DATE}"
    for part in ("raw", "prepared", "checkpoint", "evaluation"):
        shutil.copytree(src / part, dst / part)
    # Artifacts record their own URLs; the copies must point inside this workspace.
    ckpt_meta = dst / "checkpoint" / "checkpoint.json"
    ckpt_meta.write_text(ckpt_meta.read_text().replace(str(finished_run), str(tmp_path)))
    env = {**os.environ, "BATCHREC_WORKSPACE": str(tmp_path)}
    cmd = [sys.executable, "-m", "batchrec", "run", QUICKSTART, "--date", DATE, *sets(TINY)]
    outputs = tmp_path / "outputs" / "sasrec"
    proc = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    runs = outputs / "_runs"
    while not any(p.name.startswith("_staging-") for p in (runs.iterdir() if runs.exists() else [])):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "scoring never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the pod dies: driver, Ray and scorer actors at once
    proc.wait()
    assert not list(outputs.glob("*/dt=*")), "a killed run must publish nothing"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for stage in ("synth", "prepare", "train", "evaluate"):
        assert any(line.startswith(f"{stage} ") and " skipped " in line for line in lines), done.stdout
    assert any(line.startswith("score ") and " ran " in line for line in lines), done.stdout
    assert not [p for p in runs.iterdir() if p.name.startswith("_staging-")], "stale staging left behind"
    want, got = finished_run / "outputs" / "sasrec", outputs
    for table in ("topk", "user_embeddings", "item_embeddings"):
        partition = f"{table}/dt={DATE}"
        assert read_sorted(str(got / partition)).equals(read_sorted(str(want / partition))), table


@pytest.mark.slow
def test_quality_gate_blocks_an_untrained_model_with_exit_3(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(tmp_path))
    # lr=0: one epoch of zero-size steps, so the published model is its random initialisation.
    r = invoke(QUICKSTART, "--date", DATE, *sets([*TINY, "train.lr=0", "gate.beat_baseline=true"]))
    assert r.exit_code == pipeline.EXIT_GATE, r.output
    assert "gate      refused" in r.output and "popularity baseline" in r.output
    assert not (tmp_path / "outputs").exists(), "the gate must stop the run before anything is scored"
    manifest = storage.read_json(str(tmp_path / "runs" / "quickstart" / f"dt={DATE}" / pipeline.RUN_MANIFEST))
    assert manifest["status"] == "gate_failed"
    # The verdict is re-judged on every run: a rerun refuses again without retraining, and
    # `stages=[]` is the cheap "is it the gate?" check the Kubernetes driver uses.
    r = invoke(QUICKSTART, "--date", DATE, *sets([*TINY, "train.lr=0", "gate.beat_baseline=true"]))
    assert r.exit_code == pipeline.EXIT_GATE and "train     skipped" in r.output
    r = invoke(QUICKSTART, "--date", DATE, *sets(["stages=[]", "gate.beat_baseline=true"]))
    assert r.exit_code == pipeline.EXIT_GATE


def test_one_seen_item_policy_per_job(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(tmp_path))
    job = pipeline.load(QUICKSTART, ["evaluate.exclude_seen=none"], DATE)
    assert job.evaluate.exclude_seen == job.score.exclude_seen == "none"
    with pytest.raises(UserError, match="differ"):
        pipeline.load(QUICKSTART, ["evaluate.exclude_seen=none", "score.exclude_seen=history"], DATE)


def test_the_gate_judges_only_an_evaluation_made_under_the_published_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(tmp_path))
    run = tmp_path / "runs" / "quickstart" / f"dt={DATE}"
    storage.write_json(
        str(run / "checkpoint" / "checkpoint.json"), {"train_config": {"exclude_seen": "none"}}
    )

    def judge(evaluated_under: str | None):
        body = {"metrics": {"NDCG@10": 0.5}, "baseline": {"metrics": {"NDCG@10": 0.1}}}
        with storage.staged_dir(str(run / "evaluation")) as stage:
            storage.write_json(f"{stage}/{pipeline.EVALUATION}", {**body, "exclude_seen": evaluated_under})
        return invoke(QUICKSTART, "--date", DATE, "--set", "stages=[]")

    r = judge("history")  # e.g. published by an earlier attempt, before train.exclude_seen changed
    assert r.exit_code == 2 and "policy 'history', this job publishes under 'none'" in r.output
    r = judge(None)
    assert r.exit_code == 2 and "records no seen-item policy" in r.output
    r = judge("none")
    assert r.exit_code == 0 and "gate      passed" in r.output, r.output


def test_warm_start_picks_the_newest_earlier_published_checkpoint(tmp_path):
    job = pipeline.JobConfig(name="n", workspace=str(tmp_path), date="2026-11-23")
    for d, published in (
        ("2026-11-20", True),
        ("2026-11-21", True),
        ("2026-11-22", False),
        ("2026-11-23", True),
    ):
        ckpt = tmp_path / "runs" / "n" / f"dt={d}" / "checkpoint"
        ckpt.mkdir(parents=True)
        if published:
            (ckpt / "_SUCCESS").touch()
    assert pipeline.previous_checkpoint(job) == str(tmp_path / "runs" / "n" / "dt=2026-11-21" / "checkpoint")


@pytest.mark.s3
def test_a_job_on_object_storage_resumes_from_what_is_published_there(s3_bucket, moto_server, tmp_path):
    job = tmp_path / "s3.yaml"
    job.write_text(
        "# batchrec run s3.yaml\nname: on-s3\nworkspace: ${BR_TEST_BUCKET}/ws\n"
        "stages: [synth, prepare, train, evaluate]\nstorage:\n  s3_endpoint_url: ${BR_TEST_ENDPOINT}\n"
        "prepare: {}\n"
    )
    os.environ.update(BR_TEST_BUCKET=s3_bucket, BR_TEST_ENDPOINT=moto_server)
    try:
        tiny = sets([p for p in TINY if not p.startswith("score.")])
        r = invoke(str(job), "--date", DATE, *tiny)
        assert r.exit_code == 0, r.output
        run = f"{s3_bucket}/ws/runs/on-s3/dt={DATE}"
        assert storage.is_published(f"{run}/checkpoint") and storage.is_published(f"{run}/evaluation")
        assert storage.read_json(f"{run}/{pipeline.RUN_MANIFEST}")["status"] == "ok"
        r = invoke(str(job), "--date", DATE, *tiny)
        assert r.exit_code == 0 and r.output.count(" skipped ") == 4, r.output
    finally:
        for k in ("BR_TEST_BUCKET", "BR_TEST_ENDPOINT"):
            os.environ.pop(k, None)
