"""Experiment tracking in MLflow, read from the artifacts the stages publish.

With `MLFLOW_TRACKING_URI` set (or `batchrec --mlflow URI`), `train`, `evaluate`, `score` and
`run` each log one MLflow run (experiment `MLFLOW_EXPERIMENT_NAME`, default "batchrec"):
- train: the training config as parameters, every epoch's line of `{checkpoint}.metrics.jsonl`
  as metrics at step = epoch (loss, valid HR/NDCG/MRR/Coverage, seqs/s), the best ones, and the
  checkpoint URL as a tag;
- evaluate: the test metrics of the model and of the popularity baseline (`pop_…`), protocol tags;
- score: rows, users/s, users given the fallback list, timings, and the run URL;
- run: all of the above in one MLflow run named by the job's run id, every section of the job
  as parameters (`train.lr`, …), each stage's status and URL, and the gate's verdict.
Without the variable nothing is imported and nothing changes. MLflow is an optional extra
(`pip install "batchrec[mlflow]"`). Metric names carry `_at_` for `@` (MLflow allows no `@`).
Everything is logged from published artifacts, after the stage: a stage never waits on MLflow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from batchrec import distributed, log, schema, storage
from batchrec.errors import UserError

_log = log.get("tracking")


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) and distributed.is_main()


@contextmanager
def _mlflow_run(name: str, tags: dict[str, str]) -> Iterator[Any]:
    try:
        import mlflow
    except ImportError as e:
        raise UserError(
            "MLFLOW_TRACKING_URI is set but mlflow is not installed",
            fix='pip install "batchrec[mlflow]", or unset MLFLOW_TRACKING_URI',
        ) from e
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "batchrec"))
    with mlflow.start_run(run_name=name, tags={"batchrec.run_id": log.run_id(), **tags}) as run:
        yield mlflow
    _log.info("logged to MLflow: run %s (%s)", run.info.run_id, mlflow.get_tracking_uri())


def _key(name: str) -> str:
    return name.replace("@", "_at_")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def _numbers(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {_key(prefix + k): float(v) for k, v in values.items() if isinstance(v, int | float) and v == v}


def _log_checkpoint(mlflow: Any, url: str, params: bool = True) -> None:
    from batchrec import checkpoint

    meta = checkpoint.read_meta(url)
    if params:
        mlflow.log_params(_flat("train", meta.get("train_config", {})))
    metrics_url = url.rstrip("/") + ".metrics.jsonl"
    if storage.exists(metrics_url):
        for line in storage.read_bytes(metrics_url).decode().splitlines():
            record = json.loads(line)
            mlflow.log_metrics(
                _numbers({k: v for k, v in record.items() if k != "step"}), step=int(record["epoch"])
            )
    best = meta.get("metrics", {}).get("valid", {})
    mlflow.log_metrics(_numbers({k: v for k, v in best.items() if k.startswith("valid_")}, "best_"))
    mlflow.set_tags({"checkpoint": url, "model": meta.get("model", "")})


def _log_evaluation(mlflow: Any, report: dict[str, Any]) -> None:
    split = report.get("split", "test")
    mlflow.log_metrics(_numbers(report["metrics"], f"{split}_"))
    if report.get("baseline"):
        mlflow.log_metrics(_numbers(report["baseline"]["metrics"], f"pop_{split}_"))
    mlflow.set_tags(
        {"exclude_seen": report.get("exclude_seen", ""), "protocol": report.get("protocol", "")[:5000]}
    )


def _log_score(mlflow: Any, run_url: str) -> None:
    m = storage.read_json(storage.join(run_url, schema.MANIFEST))
    rows, timings = m.get("rows", {}), m.get("timings_s", {})
    figures = {f"rows_{k}": v for k, v in rows.items()}
    figures.update({f"seconds_{k}": v for k, v in timings.items()})
    if timings.get("score_users"):
        figures["users_per_s"] = rows.get("users", 0) / timings["score_users"]
    figures["users_without_known_items"] = m.get("vocabulary", {}).get("users_without_known_items", 0)
    mlflow.log_metrics(_numbers(figures))
    mlflow.set_tags({"score_run": run_url, "scored_date": m.get("date", "")})


def train(url: str) -> str:
    """Log a finished training run (its checkpoint URL); returns the URL."""
    if enabled():
        with _mlflow_run("train", {"stage": "train"}) as mlflow:
            _log_checkpoint(mlflow, url)
    return url


def evaluate(report: dict[str, Any]) -> dict[str, Any]:
    if enabled():
        with _mlflow_run(
            "evaluate", {"stage": "evaluate", "checkpoint": report.get("checkpoint", "")}
        ) as mlflow:
            _log_evaluation(mlflow, report)
    return report


def score(run_url: str) -> str:
    if enabled():
        with _mlflow_run("score", {"stage": "score"}) as mlflow:
            _log_score(mlflow, run_url)
    return run_url


def job(run_manifest_url: str) -> None:
    """Log one `batchrec run` from its run manifest (run.json), whatever its outcome."""
    if not enabled() or not storage.exists(run_manifest_url):
        return
    r = storage.read_json(run_manifest_url)
    with _mlflow_run(
        r["run_id"], {"stage": "run", "job": r["job"], "date": r["date"], "status": r["status"]}
    ) as mlflow:
        config = r.get("config", {})
        mlflow.log_params({k: v for k, v in _flat("", config).items() if not k.startswith("train.")})
        for s in r["stages"]:
            mlflow.set_tag(f"stage.{s['stage']}", s["status"])
            if s.get("url"):
                mlflow.set_tag(f"url.{s['stage']}", s["url"])
            done = s["status"] in ("ran", "skipped") and s.get("url")
            if s["stage"] == "train" and done:
                _log_checkpoint(mlflow, s["url"])
            elif s["stage"] == "evaluate" and done:
                _log_evaluation(mlflow, storage.read_json(storage.join(s["url"], "evaluation.json")))
            elif s["stage"] == "score" and done:
                _log_score(mlflow, s["url"])
            elif s["stage"] == "gate":
                mlflow.set_tag("gate", s["status"])
                mlflow.log_metric("gate_passed", 1.0 if s["status"] == "passed" else 0.0)
