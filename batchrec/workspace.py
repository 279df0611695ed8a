"""Where every artifact lives: the workspace's default locations (so `batchrec score --model
sasrec` needs no flags) and a job run's layout (`RunPaths`), read by the CLI and the job runner.

The workspace is `--workspace`, else `BATCHREC_WORKSPACE`, else `./batchrec-workspace`, and
may be any fsspec URL. Layout:
    {ws}/raw/synth/                      `batchrec data synth` default output
    {ws}/prepared/{name}/                prepared datasets (`data prepare` default: name of the input)
    {ws}/checkpoints/{model}/{stamp}/    `batchrec train` default output
    {ws}/outputs/{model}/{table}/dt={date}/   `batchrec score` default output: the published tables
    {ws}/outputs/{model}/_runs/dt={date}/     that date's run record (manifest, _SUCCESS)
    {ws}/outputs/{model}/index/dt={date}/     `batchrec index build` default output
    {ws}/runs/{job}/dt={date}/           a job's own artifacts (see `RunPaths`)
"Latest" means the published artifact with the newest `created_at` in its metadata.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass

from batchrec import schema, storage
from batchrec.errors import UserError

DEFAULT = "./batchrec-workspace"


def root(workspace: str | None = None) -> str:
    ws = workspace or os.environ.get("BATCHREC_WORKSPACE") or DEFAULT
    return ws.rstrip("/")


def raw_synth(ws: str) -> str:
    return storage.join(ws, "raw", "synth")


def prepared_root(ws: str) -> str:
    return storage.join(ws, "prepared")


def checkpoints_root(ws: str, model: str) -> str:
    return storage.join(ws, "checkpoints", model)


def outputs_root(ws: str, model: str) -> str:
    return storage.join(ws, "outputs", model)


def date_dir(date: str) -> str:
    """The name of a date's directory: Hive-style, so Spark, DuckDB and warehouses see a `dt` column."""
    return f"dt={date}"


def score_run(out: str, date: str) -> str:
    """The URL of a date's scoring run (its record: manifest and `_SUCCESS`) under the tables' root."""
    return storage.join(out, schema.RUNS_DIR, date_dir(date))


def table_url(run: str, table: str) -> str:
    """The partition of `table` that the scoring run `run` ({out}/_runs/dt=D) wrote: {out}/{table}/dt=D."""
    return storage.join(storage.parent(storage.parent(run)), table, storage.basename(run))


def run_of_partition(partition: str) -> str:
    """The scoring run that wrote a table partition ({out}/{table}/dt=D → {out}/_runs/dt=D)."""
    return storage.join(
        storage.parent(storage.parent(partition)), schema.RUNS_DIR, storage.basename(partition)
    )


def index_dir(run: str) -> str:
    return table_url(run, schema.INDEX_DIR)


def runs_root(ws: str, job: str) -> str:
    return storage.join(ws, "runs", job)


RUN_CHECKPOINT = "checkpoint"


@dataclass
class RunPaths:
    """A job run's artifacts: R = {ws}/runs/{job}/dt={date}/ holds the run's own; the scored tables
    and the index are the workspace's published outputs."""

    run: str  # R/ (run.json)
    synth: str  # R/raw/
    prepare: str  # R/prepared/
    train: str  # R/checkpoint/
    evaluate: str  # R/evaluation/
    outputs: str  # {ws}/outputs/{model}/: the tables' root (score's `out`)
    score: str  # {ws}/outputs/{model}/_runs/dt={date}/: the scoring run
    index: str  # {ws}/outputs/{model}/index/dt={date}/

    @classmethod
    def of(cls, ws: str, job: str, date: str, model: str) -> RunPaths:
        run = storage.join(runs_root(ws, job), date_dir(date))
        out = outputs_root(ws, model)
        scored = score_run(out, date)
        return cls(
            run=run,
            synth=storage.join(run, "raw"),
            prepare=storage.join(run, "prepared"),
            train=storage.join(run, RUN_CHECKPOINT),
            evaluate=storage.join(run, "evaluation"),
            outputs=out,
            score=scored,
            index=index_dir(scored),
        )


def stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


def newest(
    parent_url: str,
    *,
    meta_file: str | None = None,
    skip: Callable[[dict], bool] | None = None,
    prefix: str = "",
    before: str | None = None,
    inside: str | None = None,
) -> str | None:
    """The newest published child of `parent_url` (or that child's `inside` subdirectory).

    Newest = the latest `created_at` in the child's `meta_file` when one is named (children
    whose metadata satisfies `skip` are passed over), else the greatest name, so run
    directories `dt=YYYY-MM-DD` sort by date. Only names starting with `prefix` and sorting
    before `before` count; staging (`_…`) and hidden (`.…`) names never do.
    """
    best: tuple[str, str] | None = None
    for name in storage.ls(parent_url):
        if name.startswith(("_", ".")) or not name.startswith(prefix) or (before and name >= before):
            continue
        url = storage.join(parent_url, name, inside) if inside else storage.join(parent_url, name)
        if not storage.is_published(url, *([meta_file] if meta_file else [])):
            continue
        key = name
        if meta_file:
            info = storage.read_json(storage.join(url, meta_file))
            if skip is not None and skip(info):
                continue
            key = str(info.get("created_at", ""))
        if best is None or (key, url) > best:
            best = (key, url)
    return best[1] if best else None


def latest_prepared(ws: str) -> str | None:
    return newest(prepared_root(ws), meta_file=schema.METADATA)


def latest_checkpoint(ws: str, model: str) -> str | None:
    # Training republishes its best-so-far checkpoint every epoch with status "training";
    # defaults must only ever pick a finished one.
    return newest(
        checkpoints_root(ws, model),
        meta_file=schema.CHECKPOINT_META,
        skip=lambda meta: meta.get("metrics", {}).get("status") == "training",
    )


def require_prepared(ws: str, data: str | None = None) -> str:
    """`data` if given, else the workspace's latest prepared dataset, else one clear error."""
    url = data or latest_prepared(ws)
    if url is None:
        raise UserError(
            "no prepared dataset in the workspace",
            where=prepared_root(ws),
            fix="run `batchrec data prepare` first, or pass --data URL",
        )
    return url


def require_checkpoint(ws: str, model: str, checkpoint: str | None = None) -> str:
    """`checkpoint` if given, else the latest of `model` in the workspace, else one clear error."""
    url = checkpoint or latest_checkpoint(ws, model)
    if url is None:
        raise UserError(
            f"no checkpoint for model {model!r}",
            where=checkpoints_root(ws, model),
            fix=f"train one with `batchrec train --model {model}`, or pass --checkpoint URL",
        )
    return url
