"""Experiment tracking: with an MLflow tracking URI, train / evaluate / run log parameters, per-epoch
metrics, evaluation results, the gate verdict and the artifact URLs — checked against MLflow's local
file store through MLflow's own client. Without one, nothing is logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_synth_prepared

mlflow = pytest.importorskip("mlflow")


def batchrec(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "batchrec", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BATCHREC_"))}, **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def runs(store: Path) -> list:
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(tracking_uri=store.as_uri())
    exp = client.get_experiment_by_name("batchrec")
    return client, client.search_runs([exp.experiment_id], order_by=["start_time ASC"])


@pytest.mark.slow
def test_train_and_evaluate_log_params_epochs_and_results(tmp_path):
    data = make_synth_prepared(tmp_path)
    store = tmp_path / "mlruns"
    env = {"MLFLOW_ALLOW_FILE_STORE": "true"}
    ckpt = str(tmp_path / "ckpt")
    train = ["train", "--data", data, "--out", ckpt, "--epochs", "2", "--max-len", "20", "--device", "cpu"]
    batchrec("--mlflow", store.as_uri(), *train, env=env)
    batchrec(
        "evaluate", "--checkpoint", ckpt, "--data", data, env={**env, "MLFLOW_TRACKING_URI": store.as_uri()}
    )
    client, (t, e) = runs(store)
    # the rate the run used: unset, SASRec's `ce` default
    assert t.data.params["train.lr"] == "0.005" and t.data.params["train.epochs"] == "2"
    assert t.data.tags["checkpoint"] == ckpt and t.data.tags["stage"] == "train"
    epochs = client.get_metric_history(t.info.run_id, "valid_NDCG_at_10")
    assert [m.step for m in epochs] == [1, 2] and all(0 <= m.value <= 1 for m in epochs)
    assert t.data.metrics["best_valid_NDCG_at_10"] == max(m.value for m in epochs)
    assert {"test_NDCG_at_10", "test_HR_at_10", "pop_test_NDCG_at_10"} <= set(e.data.metrics)
    assert e.data.tags["exclude_seen"] == "history"

    batchrec("train", *train[1:4], str(tmp_path / "quiet"), *train[5:], env=env)  # no URI: nothing logged
    assert len(runs(store)[1]) == 2


@pytest.mark.slow
def test_a_job_is_one_mlflow_run_with_the_gate_verdict(tmp_path):
    store = tmp_path / "mlruns"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: tracked\nworkspace: {tmp_path / 'ws'}\ndate: '2026-11-24'\n"
        "stages: [synth, prepare, train, evaluate]\n"
        "synth: {users: 300, items: 100, avg_len: 20}\n"
        "train: {epochs: 2, max_len: 20, device: cpu}\nevaluate: {device: cpu}\n"
    )
    batchrec("run", str(job), env={"MLFLOW_TRACKING_URI": store.as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"})
    client, (r,) = runs(store)
    assert r.info.run_name == "tracked-2026-11-24" and r.data.tags["status"] == "ok"
    assert r.data.tags["gate"] == "passed" and r.data.metrics["gate_passed"] == 1.0
    assert r.data.tags["stage.train"] == "ran" and r.data.tags["url.train"].endswith("checkpoint")
    assert r.data.params["synth.users"] == "300" and r.data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(r.info.run_id, "valid_NDCG_at_10")) == 2
    assert "test_NDCG_at_10" in r.data.metrics and "pop_test_NDCG_at_10" in r.data.metrics
