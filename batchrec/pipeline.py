"""`batchrec run JOB.yaml`: one job's stages in order, each skipped when its output is published.

    batchrec run jobs/quickstart.yaml [--set train.epochs=3 …] [--date 2026-11-23] [--force]

A job file has job-level keys (name, workspace, date, stages, warm_start, storage, gate) and
one section per stage whose type IS that stage's config dataclass, so a section takes exactly
the keys `batchrec <stage>` takes. String values may use `${VAR}` and `${VAR:-default}`.

Where a run's artifacts live (R = {workspace}/runs/{name}/dt={date}); the runner fills these
into the stage sections unless the job sets them, so a rerun finds what an earlier run left:
    R/raw/                                    synth            (only when `synth` is a stage)
    R/prepared/                               prepare
    R/checkpoint/                             train
    R/evaluation/evaluation.json              evaluate: metrics + popularity baseline
    {workspace}/outputs/{model}/{table}/dt={date}/   score: the tables downstream readers use,
    {workspace}/outputs/{model}/_runs/dt={date}/     with the date's run record (complete at _SUCCESS)
    {workspace}/outputs/{model}/index/dt={date}/     index: FAISS over that date's item embeddings
    R/run.json                                run manifest: per-stage status, time, URL, figures
    R/report.html                             the run's HTML report (`batchrec report`), after every run
Every stage output is published all-or-nothing with `_SUCCESS`; a stage whose `_SUCCESS`
exists is skipped and says so, so a rerun after a crash resumes at the stage that failed and a
second run of a finished date does nothing.

The quality gate runs between evaluate and score: test NDCG@10 (`gate.metric`) below
`gate.min_value`, or not above the popularity baseline, stops the run before anything is scored.
A job has one seen-item policy (`exclude_seen`): `train.exclude_seen` is carried by the checkpoint
to evaluate and score; one set under `evaluate` or `score` is copied to the other, so the gate
judges the lists that score publishes, and it refuses an evaluation made under another policy.

Exit codes (what a CronJob needs): 0 done or nothing to do; 2 bad job file or input — fix, do
not retry; 3 the quality gate refused to publish; 75 a stage could not finish now (a stalled
scoring run) — retry; anything else — transient, retry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchrec import config, distributed, log, schema, storage, workspace
from batchrec.data.prepare import PrepareConfig
from batchrec.data.synth import SynthConfig
from batchrec.errors import UserError
from batchrec.evaluate import EvaluateConfig
from batchrec.index import IndexBuildConfig
from batchrec.score import ScoreConfig
from batchrec.train import TrainConfig

STAGES = ("synth", "prepare", "train", "evaluate", "score", "index")
DEFAULT_STAGES = ("prepare", "train", "evaluate", "score", "index")
EXIT_GATE = 3
RUN_MANIFEST = "run.json"
EVALUATION = "evaluation.json"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_log = log.get("pipeline")


class GateFailed(Exception):
    """The model is not good enough to publish: exit code 3, nothing scored."""

    def __init__(self, message: str, report: RunReport):
        super().__init__(message)
        self.report = report


@dataclass
class StorageOptions:
    s3_endpoint_url: str | None = None  # S3-compatible store (MinIO, Ceph); default: the environment's


@dataclass
class GateConfig:
    enabled: bool = True
    metric: str = "NDCG@10"  # a key of the evaluation's test metrics
    min_value: float = 0.0  # the floor: refuse to publish below it
    beat_baseline: bool = True  # also refuse unless the model beats the popularity baseline


@dataclass
class JobConfig:
    name: str  # names the run directory: {workspace}/runs/{name}/dt={date}
    workspace: str | None = None  # default: BATCHREC_WORKSPACE, else ./batchrec-workspace
    date: str | None = None  # YYYY-MM-DD; default: today (UTC); `--date` wins
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    warm_start: bool = False  # start training from the newest published model of an earlier date
    storage: StorageOptions = field(default_factory=StorageOptions)
    gate: GateConfig = field(default_factory=GateConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    prepare: PrepareConfig | None = None  # `input` is required unless `synth` runs first
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    index: IndexBuildConfig = field(default_factory=IndexBuildConfig)

    def validate(self) -> list[str]:
        errs = []
        if not _NAME.match(self.name):
            errs.append(f"name: {self.name!r} must be lowercase letters, digits, '.', '_' or '-'")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            errs.append(f"stages: unknown {unknown} (valid: {', '.join(STAGES)})")
        errs += schema.check_date("date", self.date)
        if "prepare" in self.stages and self.prepare is None:
            errs.append("prepare: the section is required when `prepare` is a stage (set prepare.input)")
        return errs


# ---------------------------------------------------------------------------------------------
# Loading: YAML → ${VAR} expansion → --set overrides → artifact URLs wired in → typed JobConfig.


def expand_env(node: Any, missing: list[str]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; collect unset names without a default."""
    if isinstance(node, dict):
        return {k: expand_env(v, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, missing) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        missing.append(m.group(1))
        return m.group(0)

    return _ENV_REF.sub(sub, node)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    sec = raw.get(name)
    if sec is None:
        sec = raw[name] = {}
    if not isinstance(sec, dict):
        raise UserError(f"section {name!r} must be a mapping, got {sec!r}")
    return sec


def _stage_list(value: Any) -> list[str]:
    if value is None:
        return list(DEFAULT_STAGES)
    if isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(s) for s in value] if isinstance(value, list) else []


def load(path: str, overrides: list[str] | None = None, date: str | None = None) -> JobConfig:
    """The typed job config; every problem in the file and the overrides reported at once."""
    from_file = config.load_yaml(path)
    raw = config.merge(from_file, config.parse_overrides(overrides))
    missing: list[str] = []
    raw = expand_env(raw, missing)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise UserError(
            f"the job refers to unset environment variables: {names}",
            where=path,
            fix="export them, or give a default in the file as ${VAR:-default}",
        )
    if date:
        raw["date"] = date
    raw["date"] = str(raw.get("date") or dt.datetime.now(dt.timezone.utc).date().isoformat())
    # Wiring follows the stages of the file and of `--set stages=…` together, so running a subset
    # (the Kubernetes steps, or `stages=[]`: only re-judge the gate) reads the same URLs.
    stages = {*_stage_list(from_file.get("stages")), *_stage_list(raw.get("stages"))}
    ws = workspace.root(raw.get("workspace"))
    raw["workspace"] = ws
    train, score = _section(raw, "train"), _section(raw, "score")
    model = str(score.get("model") or train.get("model") or TrainConfig().model)
    paths = workspace.RunPaths.of(ws, str(raw.get("name") or "job"), raw["date"], model)
    for sec in ("synth", "train", "evaluate", "score", "index"):
        _section(raw, sec).setdefault("workspace", ws)
    _section(raw, "synth").setdefault("out", paths.synth)
    if "prepare" in stages or raw.get("prepare") is not None:
        prepare = _section(raw, "prepare")
        prepare.setdefault("out", paths.prepare)
        prepare.setdefault("workspace", ws)
        if "synth" in stages:
            prepare.setdefault("input", paths.synth)
    train.setdefault("model", model)
    train.setdefault("data", paths.prepare)
    train.setdefault("out", paths.train)
    evaluate = _section(raw, "evaluate")
    policies = {sec["exclude_seen"] for sec in (evaluate, score) if sec.get("exclude_seen") is not None}
    if len(policies) > 1:
        raise UserError(
            f"evaluate.exclude_seen {evaluate['exclude_seen']!r} and score.exclude_seen "
            f"{score['exclude_seen']!r} differ: the gate would judge lists that are not published",
            where=path,
            fix="set one seen-item policy for the job (train.exclude_seen, or the same in both sections)",
        )
    for sec in (evaluate, score):
        if policies:
            sec.setdefault("exclude_seen", *policies)
    evaluate.setdefault("model", model)
    evaluate.setdefault("checkpoint", paths.train)
    evaluate.setdefault("data", paths.prepare)
    score.setdefault("model", model)
    score.setdefault("checkpoint", paths.train)
    score.setdefault("data", paths.prepare)
    score.setdefault("out", paths.outputs)
    score.setdefault("date", raw["date"])
    index = _section(raw, "index")
    index.setdefault("model", model)
    scored = workspace.score_run(str(score["out"]), str(score["date"]))
    index.setdefault("run", scored)
    index.setdefault("out", workspace.index_dir(scored))
    return config.from_dict(JobConfig, raw, where=path)


def paths_of(job: JobConfig) -> workspace.RunPaths:
    """The artifact URLs of this run, as wired into the stage sections."""
    base = workspace.RunPaths.of(workspace.root(job.workspace), job.name, str(job.date), job.score.model)
    return dataclasses.replace(
        base,
        synth=job.synth.out or base.synth,
        prepare=job.train.data or base.prepare,
        train=job.train.out or base.train,
        score=workspace.score_run(job.score.out, str(job.score.date or job.date))
        if job.score.out
        else base.score,
        index=job.index.out or base.index,
    )


# ---------------------------------------------------------------------------------------------
# Running.


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped | off | failed | passed | refused
    seconds: float = 0.0
    url: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def line(self) -> str:
        figs = "  ".join(f"{k}={_fmt(v)}" for k, v in self.figures.items())
        where = f"  → {self.url}" if self.url and self.status in ("ran", "skipped") else ""
        note = f"  ({self.note})" if self.note else ""
        return f"{self.stage:<9} {self.status:<8} {self.seconds:7.1f}s  {figs}{note}{where}".rstrip()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


@dataclass
class RunReport:
    job: str
    date: str
    run_id: str
    run_url: str
    status: str = "running"  # running | ok | failed | gate_failed
    started_at: str = field(default_factory=schema.created_at)
    finished_at: str | None = None
    stages: list[StageResult] = field(default_factory=list)

    def summary(self) -> str:
        head = f"run {self.job} dt={self.date} ({self.run_id}): {self.status}"
        total = sum(s.seconds for s in self.stages)
        return "\n".join([head, *(s.line() for s in self.stages), f"{'total':<9} {'':<8} {total:7.1f}s"])


def _write_manifest(job: JobConfig, report: RunReport) -> None:
    if not distributed.is_main():
        return
    body = dataclasses.asdict(report)
    body["config"] = dataclasses.asdict(job)
    storage.write_json(storage.join(report.run_url, RUN_MANIFEST), body)


def _clear_stale_staging(url: str) -> None:
    """Remove staging prefixes a killed earlier attempt at this same output left behind."""
    prefix = f"_staging-{storage.basename(url)}-"
    parent = storage.parent(url)
    for name in storage.ls(parent):
        if name.startswith(prefix):
            storage.remove(storage.join(parent, name))


def _earlier_stages(run_url: str) -> dict[str, StageResult]:
    """Stage records of earlier invocations for this date (e.g. the Kubernetes steps), to carry over."""
    url = storage.join(run_url, RUN_MANIFEST)
    if not storage.exists(url):
        return {}
    records = storage.read_json(url).get("stages", [])
    return {
        r["stage"]: StageResult(**{**r, "note": r.get("note") or "earlier invocation"})
        for r in records
        if r.get("status") in ("ran", "skipped") and r.get("stage") in STAGES
    }


def previous_checkpoint(job: JobConfig) -> str | None:
    """The newest published checkpoint of this job from a date before this run's."""
    runs = workspace.runs_root(workspace.root(job.workspace), job.name)
    return workspace.newest(
        runs, prefix="dt=", before=workspace.date_dir(str(job.date)), inside=workspace.RUN_CHECKPOINT
    )


def run_job(job: JobConfig, *, force: bool = False) -> RunReport:
    """Run the job's stages in order; raise GateFailed (exit 3) or the stage's error on failure."""
    from batchrec.data import prepare, synth

    storage.configure(s3_endpoint_url=job.storage.s3_endpoint_url)
    paths = paths_of(job)
    run_id = os.environ.get("BATCHREC_RUN_ID") or f"{job.name}-{job.date}"  # one run id per date
    log.set_run_id(run_id)
    report = RunReport(job=job.name, date=str(job.date), run_id=run_id, run_url=paths.run)
    earlier = _earlier_stages(paths.run)
    log.set_stage("pipeline")
    if force:
        job.prepare = job.prepare and dataclasses.replace(job.prepare, force=True)
    runners: dict[str, Callable[[], Any]] = {
        "synth": lambda: synth.run(job.synth),
        "prepare": lambda: prepare.run(job.prepare),
        "train": lambda: _train(job),
        "evaluate": lambda: _evaluate(job, paths.evaluate),
        "score": lambda: _score(job),
        "index": lambda: _index(job),
    }
    _log.info(
        "job %s dt=%s: stages %s; run directory %s", job.name, job.date, ",".join(job.stages), paths.run
    )
    try:
        for stage in STAGES:
            url = getattr(paths, stage)
            if stage not in job.stages:
                report.stages.append(earlier.get(stage) or StageResult(stage, "off"))
            elif not force and storage.is_published(url):
                log.set_stage(stage)
                _log.info("%s: already published at %s — skipping", stage, url)
                report.stages.append(StageResult(stage, "skipped", url=url, figures=_figures(stage, url)))
            else:
                log.set_stage(stage)
                if distributed.is_main():
                    _clear_stale_staging(url)
                result = StageResult(stage, "failed", url=url)
                report.stages.append(result)
                _write_manifest(job, report)
                t0 = time.monotonic()
                runners[stage]()
                result.seconds = time.monotonic() - t0
                if distributed.is_main() and not storage.is_published(url):
                    raise UserError(
                        f"the {stage} stage finished without publishing its output",
                        where=url,
                        fix=f"see the {stage} log above (e.g. train.epochs must be ≥ 1)",
                    )
                result.status, result.figures = "ran", _figures(stage, url)
                _log.info("%s: done in %.1fs → %s", stage, result.seconds, url)
            if stage == "evaluate":
                _gate(job, paths, report)
            _write_manifest(job, report)
    except GateFailed:
        report.status = "gate_failed"
        raise
    except BaseException:
        report.status = "failed"
        raise
    else:
        report.status = "ok"
    finally:
        log.set_stage("pipeline")
        report.finished_at = schema.created_at()
        _write_manifest(job, report)
    return report


def _train(job: JobConfig) -> str:
    from batchrec import train

    cfg = job.train
    if job.warm_start and cfg.warm_start is None:
        prev = previous_checkpoint(job)
        if prev:
            _log.info("warm start from %s", prev)
        else:
            _log.info("warm start: no model published for an earlier date — training from scratch")
        cfg = dataclasses.replace(cfg, warm_start=prev)
    return train.run(cfg)


def _evaluate(job: JobConfig, out: str) -> None:
    from batchrec import evaluate

    if job.train.workers and job.evaluate.device != "cpu":
        # the job trains on Ray: evaluate where its GPUs are, not on the driver's (CPU) node
        from batchrec import cluster

        cfg = dataclasses.replace(
            job.evaluate,
            **{
                k: storage.absolute(v)
                for k in ("checkpoint", "data", "workspace")
                if (v := getattr(job.evaluate, k))
            },
        )
        result = cluster.on_a_gpu(evaluate.run, cfg, address=job.train.ray_address)
    else:
        result = evaluate.run(job.evaluate)
    if not distributed.is_main():
        return
    with storage.staged_dir(out) as stage:
        storage.write_json(storage.join(stage, EVALUATION), {"created_at": schema.created_at(), **result})


def _score(job: JobConfig) -> str:
    from batchrec import score

    return score.run(job.score)


def _index(job: JobConfig) -> str:
    from batchrec import index

    return index.build(job.index)


def _gate(job: JobConfig, paths: workspace.RunPaths, report: RunReport) -> None:
    """Refuse to go on to scoring when the evaluated model is worse than the floor or popularity."""
    gate = job.gate
    if not gate.enabled:
        report.stages.append(StageResult("gate", "off"))
        return
    if not storage.is_published(paths.evaluate):
        if "score" in job.stages:
            raise UserError(
                "the quality gate has no evaluation of this run's model to judge",
                where=paths.evaluate,
                fix="add `evaluate` to the job's stages, or set gate.enabled=false",
            )
        return
    ev = storage.read_json(storage.join(paths.evaluate, EVALUATION))
    _check_policy(job, paths, ev)
    metrics, baseline = ev.get("metrics", {}), ev.get("baseline", {}).get("metrics", {})
    if gate.metric not in metrics:
        raise UserError(
            f"gate.metric {gate.metric!r} is not among the evaluation's metrics ({', '.join(metrics)})",
            where=paths.evaluate,
            fix="set gate.metric to one of them",
        )
    value = float(metrics[gate.metric])
    pop = baseline.get(gate.metric)
    figures = {gate.metric: value, "floor": gate.min_value}
    problems = []
    if value < gate.min_value:
        problems.append(f"{gate.metric} {value:.4f} < floor {gate.min_value:.4f}")
    if gate.beat_baseline and pop is not None:
        figures["pop"] = float(pop)
        if value <= float(pop):
            problems.append(f"{gate.metric} {value:.4f} ≤ popularity baseline {float(pop):.4f}")
    log.set_stage("gate")
    if problems:
        report.stages.append(StageResult("gate", "refused", figures=figures, note="; ".join(problems)))
        _log.error("quality gate refused to publish: %s", "; ".join(problems))
        raise GateFailed("; ".join(problems), report)
    report.stages.append(StageResult("gate", "passed", figures=figures))
    _log.info("quality gate passed: %s", "  ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))


def _check_policy(job: JobConfig, paths: workspace.RunPaths, ev: dict[str, Any]) -> None:
    """The evaluation must have been made under the policy score publishes with: an evaluation
    published by an earlier attempt with another policy would let the gate judge other lists."""
    from batchrec.ranking import seen_policy

    ckpt = job.evaluate.checkpoint or paths.train
    meta_url = storage.join(ckpt, schema.CHECKPOINT_META)
    train_config = storage.read_json(meta_url).get("train_config") if storage.exists(meta_url) else None
    expected, found = seen_policy(job.evaluate.exclude_seen, train_config), ev.get("exclude_seen")
    if found != expected:
        raise UserError(
            (
                f"the evaluation was made under seen-item policy {found!r}"
                if found
                else "the evaluation records no seen-item policy (an older batchrec)"
            )
            + f", this job publishes under {expected!r}",
            where=paths.evaluate,
            fix="evaluate again: rerun the job with --force, or remove the evaluation directory",
        )


def _figures(stage: str, url: str) -> dict[str, Any]:
    """Key figures of a published stage output, read back from the artifact itself."""
    try:
        if stage == "synth":
            return {"files": len([n for n in storage.ls(url) if n.endswith(".parquet")])}
        if stage == "prepare":
            stats = storage.read_json(storage.join(url, schema.METADATA)).get("stats", {})
            return {k: stats[k] for k in ("users", "items", "interactions") if k in stats}
        if stage == "train":
            meta = storage.read_json(storage.join(url, schema.CHECKPOINT_META))
            valid = meta.get("metrics", {}).get("valid", {})
            figs = {"model": meta.get("model")}
            for key in ("epoch", "valid_NDCG@10", "NDCG@10"):
                if key in valid:
                    figs[key] = valid[key]
            return figs
        if stage == "evaluate":
            ev = storage.read_json(storage.join(url, EVALUATION))
            m, pop = ev.get("metrics", {}), ev.get("baseline", {}).get("metrics", {})
            figs = {k: m[k] for k in ("NDCG@10", "HR@10") if k in m}
            if "NDCG@10" in pop:
                figs["pop NDCG@10"] = pop["NDCG@10"]
            return figs
        if stage == "score":
            man = storage.read_json(storage.join(url, schema.MANIFEST))
            users, secs = man["rows"]["users"], man["timings_s"].get("score_users", 0.0)
            return {"users": users, "k": man["k"], "users/s": users / max(secs, 1e-9)}
        if stage == "index":
            meta = storage.read_json(storage.join(url, schema.METADATA))
            return {k: meta[k] for k in ("factory", "n", "d", "tuned_recall@10") if meta.get(k) is not None}
    except (OSError, KeyError, ValueError) as e:
        return {"figures": f"unreadable ({e.__class__.__name__})"}
    return {}
