"""The ingest stage: interaction log (any format, any URL) → prepared dataset (`batchrec.schema`).

    read → min rating → order (time, input order) → repeats → k-core → dense ids → split → publish

`run(cfg)` returns the dataset URL; nothing is written at the destination unless every step
succeeded (`write_prepared` publishes all files at once).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from batchrec import log, storage, workspace
from batchrec.data import formats, sequences
from batchrec.dataset import write_prepared
from batchrec.errors import UserError

_log = log.get("data.prepare")

# Generic file names whose folder names the dataset better (ml-100k/u.data → ml-100k).
ENGINES = ("auto", "local", "ray")
_GENERIC_NAMES = {"u.data", "ratings.dat", "ratings.csv", "ratings.parquet", "interactions.parquet"}


@dataclass
class PrepareConfig:
    input: str  # interactions: a file, a Parquet directory or a MovieLens folder (any fsspec URL)
    out: str | None = None  # destination; default: {workspace}/prepared/{input name}
    # auto, parquet, csv, tsv, movielens-100k, movielens-dat, recbole, playlist, sasrec-txt
    format: str = "auto"
    user_col: str | None = None  # user id column; default: detected
    item_col: str | None = None  # item id column; several, comma-separated, make a composite item
    time_col: str | None = None  # timestamp column; default: detected
    rating_col: str | None = None  # rating column; default: detected
    min_rating: float | None = None  # keep only events rated at least this (implicit feedback)
    repeats: Literal["keep", "drop-consecutive", "first"] = "keep"  # repeated (user, item) events
    min_user_count: int = 5  # k-core: minimum events per user (0 disables)
    min_item_count: int = 5  # k-core: minimum events per item (0 disables)
    split: Literal["loo", "time", "full"] = "loo"  # leave-one-out, global time quantiles, or none
    valid_quantile: float = 0.8  # split=time: valid targets after this quantile of time
    test_quantile: float = 0.9  # split=time: test targets after this quantile of time
    force: bool = False  # replace a different dataset already at `out`
    workspace: str | None = None  # workspace for default locations
    # local: one process (polars); ray: spread over a Ray cluster by user; auto: ray when joining a cluster
    engine: Literal["auto", "local", "ray"] = "auto"
    partitions: int = 0  # engine ray: user partitions = dataset parts (0: one per 4M input rows)
    ray_address: str | None = None  # Ray cluster to join (engine ray); default: a local Ray

    def validate(self) -> list[str]:
        errs = []
        if self.format != "auto" and self.format not in formats.FORMATS:
            errs.append(f"format: {self.format!r} is not auto or one of {', '.join(formats.FORMATS)}")
        if self.repeats not in sequences.REPEATS:
            errs.append(f"repeats: {self.repeats!r} is not one of {', '.join(sequences.REPEATS)}")
        if self.split not in sequences.SPLITS:
            errs.append(f"split: {self.split!r} is not one of {', '.join(sequences.SPLITS)}")
        if self.engine not in ENGINES:
            errs.append(f"engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.partitions < 0:
            errs.append("partitions must be >= 0 (0: automatic)")
        if self.min_user_count < 0 or self.min_item_count < 0:
            errs.append("min_user_count and min_item_count must be >= 0 (0 disables)")
        if not 0 < self.valid_quantile < self.test_quantile < 1:
            errs.append(
                f"need 0 < valid_quantile < test_quantile < 1, got {self.valid_quantile}, {self.test_quantile}"
            )
        return errs

    def params(self) -> dict:
        """The parameters that shape the data (recorded in metadata.json)."""
        skip = {"input", "out", "force", "workspace", "engine", "partitions", "ray_address"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def default_out(input_url: str, ws: str | None = None) -> str:
    name = storage.basename(input_url)
    if name in _GENERIC_NAMES:
        name = storage.basename(storage.parent(input_url)) or name
    stem = os.path.splitext(name)[0] if "." in name.strip(".") else name
    return storage.join(workspace.prepared_root(workspace.root(ws)), stem or "dataset")


def engine(cfg: PrepareConfig) -> str:
    """`auto`: the Ray engine when joining a cluster (--ray-address or RAY_ADDRESS, as a RayJob's
    driver does), else the local one."""
    if cfg.engine != "auto":
        return cfg.engine
    return "ray" if cfg.ray_address or os.environ.get("RAY_ADDRESS") else "local"


def run(cfg: PrepareConfig) -> str:
    errs = cfg.validate()
    if errs:
        raise UserError(f"invalid prepare options: {'; '.join(errs)}")
    out = cfg.out or default_out(cfg.input, cfg.workspace)
    t0 = time.monotonic()
    if engine(cfg) == "ray":
        from batchrec.data import ray_engine

        ray_engine.run(cfg, out, {**cfg.params(), "engine": "ray"})
        _log.info(f"prepared dataset published at {out} ({time.monotonic() - t0:.1f}s)")
        return out
    cols = formats.Columns(user=cfg.user_col, item=cfg.item_col, time=cfg.time_col, rating=cfg.rating_col)
    data = formats.read(cfg.input, cfg.format, cols)
    _log.info(f"read {data.frame.height:,} interactions ({data.format}) in {time.monotonic() - t0:.1f}s")
    if cfg.split == "time" and not data.has_time:
        raise UserError(
            f"--split time needs timestamps and the {data.format} format has none",
            where=cfg.input,
            fix="use --split loo or --split full",
        )
    df = sequences.filter_rating(data.frame, cfg.min_rating, cfg.input)
    df = sequences.order(df)
    df = sequences.drop_repeats(df, cfg.repeats)
    df = sequences.k_core(df, cfg.min_user_count, cfg.min_item_count, cfg.input)
    seqs = sequences.build(df)
    fmt = data.format
    del df, data  # the row frame is the biggest object; free it before building tables
    sp = sequences.split(seqs, cfg.split, cfg.valid_quantile, cfg.test_quantile)
    lengths = np.diff(seqs.offsets)
    stats = sequences.summary(len(seqs.user_ids), len(seqs.item_ids), np.bincount(lengths))
    stats["splits"] = sequences.split_sizes(sp.train_len, sp.targets)
    if stats["splits"]["valid"] == 0 and stats["splits"]["test"] == 0 and cfg.split != "full":
        _log.warning(f"the {cfg.split} split produced no evaluation targets")
    _log.info(
        f"{stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions; "
        f"splits {stats['splits']} ({time.monotonic() - t0:.1f}s)"
    )
    write_prepared(
        out,
        item_ids=seqs.item_ids,
        user_ids=seqs.user_ids,
        sequences=sequences.sequence_table(seqs, sp.train_len),
        targets=sp.targets,
        source=cfg.input,
        params={**cfg.params(), "format": fmt},
        stats=stats,
        overwrite=cfg.force,
    )
    _log.info(f"prepared dataset published at {out} ({time.monotonic() - t0:.1f}s)")
    return out
