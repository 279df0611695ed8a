"""Synthetic interactions with real sequential structure, so sequence models have something to learn.

The generative story, per user:
- items are split into clusters of ~50, laid out on a ring inside each cluster; clusters have
  Zipf popularity, and each user likes 1-3 clusters drawn by that popularity;
- a session starts at a Zipf-popular item of one of the user's clusters and walks forward along
  the ring (step 1, 2 or 3 with probabilities 0.7/0.2/0.1): the next item is nearly determined
  by the previous one, which popularity cannot see and a sequence model can;
- with probability 0.1 an event jumps to another of the user's clusters (a new walk starts),
  and with probability 0.05 it is noise: a globally Zipf-popular item, after which the walk
  resumes where it was.
Lengths are 5 + a negative binomial (mean `avg_len`, long tail). Timestamps: each user starts
at a random time in one year and events follow ~1 h apart.

Output: a Parquet directory of parts (`user_id`, `item_id`, `timestamp`, all int64), one part
per chunk of users, published atomically with `_SUCCESS`. Chunks are generated with vectorised
numpy from their own seeded generator, so the output depends only on the config, and memory
stays bounded by the chunk size whatever the number of users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from batchrec import log, storage, workspace
from batchrec.errors import UserError

_log = log.get("data.synth")

CHUNK_USERS = 50_000  # part of the determinism contract: changing it changes the data
CLUSTER_SIZE = 50
MIN_LEN = 5
P_JUMP, P_NOISE = 0.10, 0.05
STEPS, STEP_P = np.array([1, 2, 3]), np.array([0.7, 0.2, 0.1])
T0, SPAN_S, GAP_S = 1_600_000_000, 365 * 86400, 3600.0


@dataclass
class SynthConfig:
    out: str | None = None  # destination; default: {workspace}/raw/synth
    users: int = 5000  # number of users
    items: int = 1000  # number of items
    avg_len: float = 40.0  # average events per user (minimum 5)
    seed: int = 0  # random seed; same seed, same data
    workspace: str | None = None  # workspace for default locations

    def validate(self) -> list[str]:
        errs = []
        if self.users < 1:
            errs.append(f"users must be >= 1, got {self.users}")
        if self.items < 2:
            errs.append(f"items must be >= 2, got {self.items}")
        if self.avg_len < MIN_LEN:
            errs.append(f"avg_len must be >= {MIN_LEN}, got {self.avg_len}")
        return errs


@dataclass
class _World:
    """What all users share: cluster layout, popularity, external item ids."""

    starts: np.ndarray  # first internal item of each cluster
    sizes: np.ndarray  # items per cluster
    cluster_p: np.ndarray  # cluster popularity (Zipf)
    item_ids: np.ndarray  # external id of internal item i
    popular: np.ndarray  # internal items, most popular first (noise draws)


def _zipf_p(n: int, a: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    return w / w.sum()


def _world(cfg: SynthConfig) -> _World:
    rng = np.random.default_rng([cfg.seed, 0xC1])
    n_clusters = max(1, round(cfg.items / CLUSTER_SIZE))
    bounds = np.linspace(0, cfg.items, n_clusters + 1).round().astype(np.int64)
    return _World(
        starts=bounds[:-1],
        sizes=np.diff(bounds),
        cluster_p=rng.permutation(_zipf_p(n_clusters, 0.8)),
        item_ids=rng.permutation(cfg.items).astype(np.int64) + 1,
        popular=rng.permutation(cfg.items),
    )


def _segment_cumsum(values: np.ndarray, seg_start: np.ndarray, seg_id: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at each segment; seg_start[s] is the first index of segment s."""
    cs = np.cumsum(values)
    return cs - (cs[seg_start] - values[seg_start])[seg_id]


def _chunk(cfg: SynthConfig, world: _World, index: int, n_users: int) -> pa.Table:
    rng = np.random.default_rng([cfg.seed, index])
    extra = cfg.avg_len - MIN_LEN
    p = 2.0 / (2.0 + extra) if extra > 0 else 1.0
    lengths = MIN_LEN + np.minimum(rng.negative_binomial(2, p, n_users), int(20 * cfg.avg_len))
    n = int(lengths.sum())
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    user = np.repeat(np.arange(n_users), lengths)

    # Each user likes up to 3 clusters; a walk starts in one of them.
    n_clusters = len(world.sizes)
    taste = rng.choice(n_clusters, size=(n_users, 3), p=world.cluster_p)
    n_taste = rng.integers(1, 4, n_users)
    jump = rng.random(n) < P_JUMP
    jump[offsets[:-1]] = True
    noise = ~jump & (rng.random(n) < P_NOISE)
    jump_at = np.flatnonzero(jump)
    seg_id = np.cumsum(jump) - 1
    ju = user[jump_at]
    cluster = taste[ju, rng.integers(0, 3, len(jump_at)) % n_taste[ju]]
    start_pos = (rng.zipf(1.6, len(jump_at)) - 1) % world.sizes[cluster]

    step = STEPS[rng.choice(3, size=n, p=STEP_P)]
    step[noise] = 0
    step[jump_at] = start_pos
    pos = _segment_cumsum(step, jump_at, seg_id)
    c = cluster[seg_id]
    item = world.starts[c] + pos % world.sizes[c]
    noise_at = np.flatnonzero(noise)
    item[noise_at] = world.popular[(rng.zipf(1.3, len(noise_at)) - 1) % len(world.popular)]

    gaps = 1 + rng.exponential(GAP_S, n).astype(np.int64)
    gaps[offsets[:-1]] = T0 + rng.integers(0, SPAN_S, n_users)
    timestamp = _segment_cumsum(gaps, offsets[:-1], user)
    return pa.table(
        {
            "user_id": pa.array(user + index * CHUNK_USERS + 1, pa.int64()),
            "item_id": pa.array(world.item_ids[item], pa.int64()),
            "timestamp": pa.array(timestamp, pa.int64()),
        }
    )


def run(cfg: SynthConfig) -> str:
    errs = cfg.validate()
    if errs:
        raise UserError(f"invalid synth options: {'; '.join(errs)}")
    out = cfg.out or workspace.raw_synth(workspace.root(cfg.workspace))
    world = _world(cfg)
    events = 0
    with storage.staged_dir(out) as stage, log.Progress(cfg.users, "synth", unit="users") as bar:
        for index, first in enumerate(range(0, cfg.users, CHUNK_USERS)):
            n_users = min(CHUNK_USERS, cfg.users - first)
            table = _chunk(cfg, world, index, n_users)
            storage.write_parquet(table, storage.join(stage, f"part-{index:05d}.parquet"))
            events += table.num_rows
            bar.update(n_users, events=events)
    _log.info(f"wrote {events:,} interactions of {cfg.users:,} users over {cfg.items:,} items to {out}")
    return out
