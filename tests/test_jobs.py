"""Every shipped job file loads into a typed JobConfig and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrec import pipeline
from batchrec.data.prepare import PrepareConfig
from batchrec.errors import UserError
from batchrec.score import ScoreConfig
from batchrec.train import TrainConfig

JOBS = Path(__file__).resolve().parents[1] / "jobs"
JOB_FILES = sorted(JOBS.glob("*.yaml"))
ENV = {
    "BATCHREC_WORKSPACE": "s3://bucket/ws",
    "BATCHREC_INPUT": "s3://bucket/events/",
}


def test_the_expected_jobs_ship():
    names = {p.name for p in JOB_FILES}
    assert {
        "quickstart.yaml",
        "nightly-sasrec.yaml",
        "bert4rec.yaml",
        "ml1m-sasrec.yaml",
        "ml1m-bert4rec.yaml",
    } <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_file_loads_and_validates(path, monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# batchrec run jobs/{path.name}"), first
    job = pipeline.load(str(path), date="2026-11-23")
    assert isinstance(job.train, TrainConfig) and isinstance(job.score, ScoreConfig)
    assert job.stages and set(job.stages) <= set(pipeline.STAGES)
    assert isinstance(job.prepare, PrepareConfig)
    assert job.name == path.stem
    if "score" in job.stages:
        assert job.gate.enabled and "evaluate" in job.stages, "scoring must sit behind the quality gate"


def test_quickstart_writes_under_the_workspace_env_or_the_default(monkeypatch):
    monkeypatch.delenv("BATCHREC_WORKSPACE", raising=False)
    job = pipeline.load(str(JOBS / "quickstart.yaml"), date="2026-11-23")
    assert job.workspace == "./batchrec-workspace" and "synth" in job.stages
    assert job.train.device == "cpu"
    monkeypatch.setenv("BATCHREC_WORKSPACE", "/data/ws")
    job = pipeline.load(str(JOBS / "quickstart.yaml"), date="2026-11-23")
    assert (
        job.score.out == "/data/ws/outputs/sasrec"
        and job.index.run == "/data/ws/outputs/sasrec/_runs/dt=2026-11-23"
    )


def test_nightly_takes_its_locations_from_the_environment(monkeypatch):
    for k in ("BATCHREC_WORKSPACE", "BATCHREC_INPUT", "BATCHREC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UserError, match="BATCHREC_INPUT, BATCHREC_WORKSPACE"):
        pipeline.load(str(JOBS / "nightly-sasrec.yaml"))
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("BATCHREC_GATE_MIN_NDCG", "0.1")
    job = pipeline.load(str(JOBS / "nightly-sasrec.yaml"), date="2026-11-23")
    assert job.prepare.input == "s3://bucket/events/" and job.gate.min_value == 0.1
    assert job.warm_start and job.storage.s3_endpoint_url == ""
    assert job.train.out == "s3://bucket/ws/runs/nightly-sasrec/dt=2026-11-23/checkpoint"


@pytest.mark.parametrize("name", ["ml1m-sasrec.yaml", "ml1m-bert4rec.yaml"])
def test_ml1m_jobs_read_sasrec_text_without_k_core_and_do_not_score(name, monkeypatch):
    monkeypatch.delenv("BATCHREC_ML1M", raising=False)
    job = pipeline.load(str(JOBS / name), date="2026-11-23")
    assert job.prepare.input == "../shared/data/ml-1m-sasrec/ml-1m.txt"
    assert job.prepare.format == "sasrec-txt" and job.prepare.split == "loo"
    assert job.prepare.min_user_count == job.prepare.min_item_count == 0
    assert job.stages == ["prepare", "train", "evaluate"]
    monkeypatch.setenv("BATCHREC_ML1M", "/elsewhere/ml-1m.txt")
    assert pipeline.load(str(JOBS / name)).prepare.input == "/elsewhere/ml-1m.txt"


def test_unknown_keys_in_any_section_are_all_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nworkspace: /w\ncolour: red\ngate:\n  floor: 1\nscore:\n  kk: 3\n")
    with pytest.raises(UserError) as e:
        pipeline.load(str(bad))
    for key in ("colour: unknown key", "gate.floor: unknown key", "score.kk: unknown key"):
        assert key in str(e.value)


@pytest.mark.parametrize(
    "name", ["quickstart.yaml", "ml1m-sasrec.yaml", "bert4rec.yaml", "ml1m-bert4rec.yaml"]
)
def test_jobs_that_set_their_learning_rate_keep_it_constant(name, monkeypatch):
    # SASRec-CE's (and BERT4Rec-CE's) default cosine schedule over a job's own short `epochs` halved
    # the quickstart's NDCG@10 (0.435 → 0.246): a job that names its rate keeps the schedule it was
    # measured with
    monkeypatch.setenv("BATCHREC_ML1M", "/elsewhere/ml-1m.txt")
    job = pipeline.load(str(JOBS / name), date="2026-11-23")
    assert job.train.lr is not None and job.train.lr_schedule == "constant"
