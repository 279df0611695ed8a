"""`batchrec score`: every user's full history → user vector → top-k unseen items, as Parquet.

    batchrec score --model sasrec          # workspace defaults for checkpoint, data, output, date

One Ray Data job, the same code on a laptop (`ray.init()` starts a local Ray) and on KubeRay
(`--ray-address` / `RAY_ADDRESS` joins the cluster):

    read sequences parts (user_idx, items)    streamed in blocks, never whole in the driver
      → map_batches(ScoreWriter)                actors: Scorer (encode + chunked exact top-k),
                                                then export.write_part → user_embeddings/ + topk/
      → the driver iterates per-batch counts     progress (users, users/s, ETA)
    item_embeddings/ from the driver; row counts checked; manifest.json; publish; _SUCCESS last.

Everything is written under a staging prefix and moved into place only when complete: each
table's `dt=DATE` partition ({out}/{table}/dt=DATE/), then the run record {out}/_runs/dt=DATE/
with the manifest and `_SUCCESS` (`export.publish_run`). A failed run publishes nothing and a
rerun for the same date replaces that date whole.

Never hanging: the actor pool is sized from what the cluster can give now (one CPU always left
to the read tasks) and may start with one actor; a stall watchdog stops a run in which no batch
completes within `stall_timeout_s`, kills its actors and exits 75 (retryable). A scorer actor
that dies (its node lost) is restarted and its batch retried; parts are named by batch, so a
retried batch replaces its files. Any checkpoint scores any prepared data: items are matched to
the checkpoint's vocabulary by external id (`checkpoint.vocabulary`).
The `Scorer` (batchrec/scorer.py) is a plain callable (dict of numpy arrays → dict): it runs on
one batch without Ray, which is how its tests, the GPU benchmark and `batchrec recommend` use it.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from batchrec import export, log, ranking, schema, storage, workspace
from batchrec.errors import RetryableError, UserError
from batchrec.scorer import Scorer

_log = log.get("score")


@dataclass
class ScoreConfig:
    model: str = "sasrec"  # model name (as trained)
    checkpoint: str | None = None  # default: the workspace's latest checkpoint of `model`
    data: str | None = None  # prepared dataset; default: the workspace's latest
    # root of the published tables ({out}/{table}/dt={date}/); default: {workspace}/outputs/{model}
    out: str | None = None
    workspace: str | None = None  # workspace for default locations
    date: str | None = None  # run date YYYY-MM-DD; default: today (UTC)
    k: int = 100  # items per user in the top-k table
    batch_size: int = 4096  # users per Ray Data batch (one Parquet part per batch)
    num_workers: int | None = None  # scorer actors; default: one per GPU, else one per spare CPU
    gpus_per_worker: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float = 1.0  # CPUs (and, by default, scoring lanes) per scorer actor
    # threads per CPU actor, default cpus_per_worker: each one an independent scoring lane (its
    # share of every batch, one torch/FAISS thread); more than the Ray CPUs it reserves lets one
    # actor use a small machine's every core while its read tasks still get scheduled.
    threads_per_worker: int | None = None
    ray_address: str | None = None  # Ray cluster to join (e.g. ray://head:10001); default: a local Ray
    topk_layout: Literal["lists", "exploded"] = "lists"  # one row per user, or one per (user, rank)
    retrieval: Literal["exact", "faiss"] = "exact"  # exact (chunked matmul) or faiss (ANN, huge catalogues)
    recall_sample: int = 1000  # users on which --retrieval faiss is compared with exact
    # Seconds without a completed batch before the run is stopped (exit 75, nothing published).
    # None: 600 s until the first batch (actor start-up, model load), then 10× the slowest
    # batch so far, at least 120 s.
    stall_timeout_s: float | None = None
    exclude_seen: ranking.SeenPolicy | None = None  # default: the checkpoint's training policy
    # Test-only fault injection: "kill-once:PATH" kills the scorer process on the first batch
    # while PATH does not exist (and creates it); "raise" fails every batch; "hang" blocks forever;
    # "slow:S" sleeps S seconds per batch.
    fault: str | None = None

    def validate(self) -> list[str]:
        errs = []
        if self.k < 1:
            errs.append(f"k must be ≥ 1, got {self.k}")
        if self.batch_size < 1:
            errs.append(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.num_workers is not None and self.num_workers < 1:
            errs.append(f"num_workers must be ≥ 1, got {self.num_workers}")
        if self.stall_timeout_s is not None and self.stall_timeout_s <= 0:
            errs.append(f"stall_timeout_s must be > 0, got {self.stall_timeout_s}")
        return errs + schema.check_date("date", self.date)


class ScoreWriter:
    """The Ray Data actor: a Scorer plus the id maps; writes each batch as Parquet parts, returns counts.

    Histories arrive in the data's item ids and are translated to the checkpoint's. A user left
    with no item the model knows is not scored here: the batch's row names them (`fallback`),
    with the batch's item counts, and the driver writes their popularity lists at the end."""

    def __init__(self, checkpoint: str, data: str, run_url: str, layout: str, scorer_kwargs: dict[str, Any]):
        from batchrec import checkpoint as ckpt
        from batchrec.dataset import PreparedDataset

        self.scorer = Scorer(checkpoint, **scorer_kwargs)
        prepared = PreparedDataset.open(data)
        self.user_map = prepared.user_map
        # Built here from the URLs rather than shipped: small constructor arguments stay inline,
        # so a restarted actor never depends on an object that died with a node.
        self.vocab = ckpt.vocabulary(
            checkpoint,
            ckpt.read_meta(checkpoint),
            prepared.item_map,
            prepared.metadata["item_map_fingerprint"],
        )
        self.run_url, self.layout = run_url, layout

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # A failure comes back as a row, not as an exception: the driver then stops every actor
        # with force at once, instead of Ray Data releasing them whenever its handles are collected.
        try:
            return self._score(batch)
        except Exception as e:
            _log.exception("scoring a batch failed")
            empty = _cell(np.zeros(0, np.int64))
            return {
                **self._counts(0, 0, 0),
                "fallback": empty,
                "seen_items": empty,
                "seen_counts": empty,
                "error": np.array([f"{type(e).__name__}: {e}"], dtype=object),
            }

    def _score(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        histories = [np.asarray(h, dtype=np.int64) for h in batch["items"]]
        n_events = sum(len(h) for h in histories)
        if not self.vocab.identity:
            histories = [self.vocab.translate(h) for h in histories]
        keep = np.array([len(h) > 0 for h in histories], dtype=bool)
        users = np.asarray(batch["user_idx"])[keep]
        kept = [h for h, k in zip(histories, keep, strict=True) if k]
        n = 0
        if len(kept):
            scored = self.scorer({"user_idx": users, "items": kept})
            n = export.write_part(self.run_url, scored, self.user_map, self.vocab.items, self.layout)
        dropped = n_events - sum(len(h) for h in histories)
        seen, times = np.unique(np.concatenate(kept), return_counts=True) if kept else (np.zeros(0, int),) * 2
        return {
            **self._counts(n, int((~keep).sum()), dropped),
            "fallback": _cell(np.asarray(batch["user_idx"], dtype=np.int64)[~keep]),
            "seen_items": _cell(seen.astype(np.int64)),
            "seen_counts": _cell(times.astype(np.int64)),
            "error": np.array([""], dtype=object),
        }

    def _counts(self, users: int, skipped: int, dropped_items: int) -> dict[str, np.ndarray]:
        """One row per batch: counts, and where it ran (the manifest says which nodes scored)."""
        import ray

        where = ray.get_runtime_context()
        return {
            "users": np.array([users], dtype=np.int64),
            "skipped": np.array([skipped], dtype=np.int64),
            "dropped_items": np.array([dropped_items], dtype=np.int64),
            "node": np.array([where.get_node_id()], dtype=object),
            "actor": np.array([where.get_actor_id()], dtype=object),
        }


def _cell(values: np.ndarray) -> np.ndarray:
    """One batch-row cell holding an array (a Ray Data object column)."""
    cell = np.empty(1, dtype=object)
    cell[0] = values
    return cell


# ---------------------------------------------------------------------------------------------
# The stage.


@dataclass
class _Inputs:
    checkpoint: str
    data: str
    out: str  # the tables' root
    date: str
    run: str  # {out}/_runs/dt={date}: the run's record, and the URL `score` returns


def resolve(cfg: ScoreConfig) -> _Inputs:
    """Fill workspace defaults; explicit values win. Missing inputs → one UserError naming where we looked."""
    ws = workspace.root(cfg.workspace)
    date = cfg.date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    ckpt = workspace.require_checkpoint(ws, cfg.model, cfg.checkpoint)
    data = workspace.require_prepared(ws, cfg.data)
    out = cfg.out or workspace.outputs_root(ws, cfg.model)
    return _Inputs(checkpoint=ckpt, data=data, out=out, date=date, run=workspace.score_run(out, date))


def _check_writable(out: str) -> None:
    """Fail before any work if the destination cannot take writes (bad bucket, read-only path)."""
    probe = storage.join(storage.parent(out), f"_probe-{uuid.uuid4().hex[:12]}")
    try:
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except (OSError, PermissionError) as e:
        raise UserError(
            f"cannot write to the output location: {e}", where=out, fix="choose a writable --out"
        ) from e


@dataclass(frozen=True)
class Pool:
    min_size: int
    max_size: int
    gpus: float


def pool_size(cfg: ScoreConfig, available: dict[str, float], total: dict[str, float]) -> Pool:
    """The scorer actor pool, from what the cluster can give NOW (not its total: a previous run's
    actors or another job may hold some of it). One CPU always stays free for the read tasks,
    or the actors would take every CPU and the reads would wait forever (ray-project/ray#44687).
    The pool starts with one actor and grows to `max_size` as resources free up; an explicit
    `num_workers` is a fixed pool."""
    gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if total.get("GPU") else 0.0)
    if cfg.num_workers:  # asked for: wait for all of them (the stall watchdog bounds the wait)
        return Pool(cfg.num_workers, cfg.num_workers, gpus)
    if gpus:
        return Pool(1, max(1, int(available.get("GPU", 0) // gpus)), gpus)
    return Pool(1, max(1, int((available.get("CPU", 0) - 1) // cfg.cpus_per_worker)), gpus)


def run(cfg: ScoreConfig) -> str:
    """Score every user of the prepared data with the checkpoint; publish the run; return its URL."""
    from batchrec import checkpoint as ckpt
    from batchrec import cluster
    from batchrec.dataset import PreparedDataset

    log.set_stage("score")
    t_start = time.monotonic()
    inputs = resolve(cfg)
    meta = ckpt.read_meta(inputs.checkpoint)
    if meta.get("model") != cfg.model:
        raise UserError(
            f"the checkpoint is a {meta.get('model')!r} model, not {cfg.model!r}",
            where=inputs.checkpoint,
            fix=f"pass --model {meta.get('model')} or another --checkpoint",
        )
    prepared = PreparedDataset.open(inputs.data)
    vocab = ckpt.vocabulary(
        inputs.checkpoint, meta, prepared.item_map, prepared.metadata["item_map_fingerprint"]
    )
    n_items = len(vocab.items)
    if cfg.k > n_items:
        raise UserError(
            f"k={cfg.k} is larger than the catalogue ({n_items} items)",
            where=inputs.checkpoint,
            fix=f"use --k {n_items} or less",
        )
    policy = ranking.seen_policy(cfg.exclude_seen, meta.get("train_config"))
    n_users = prepared.n_users
    _log.info(
        "scoring %s users × %s items, k=%s, exclude_seen=%s: %s → %s",
        f"{n_users:,}", f"{n_items:,}", cfg.k, policy, inputs.checkpoint, inputs.out,
    )  # fmt: skip
    if not vocab.identity:
        _log.info(
            "the data has %s items, %s of them known to the model; unknown items are dropped from histories",
            f"{vocab.data_items:,}", f"{vocab.known:,}",
        )  # fmt: skip

    _check_writable(inputs.run)
    timings: dict[str, float] = {}
    with (
        cluster.session(cfg.ray_address) as owned,
        storage.staged_dir(inputs.run, publisher=export.publish_run) as stage,
    ):
        t0 = time.monotonic()
        driver_scorer = Scorer(inputs.checkpoint, k=cfg.k, device="cpu")
        d = driver_scorer.d
        item_table = export.item_embeddings_table(driver_scorer.item_vectors(), vocab.items)
        export.write_table(item_table, storage.join(stage, schema.ITEM_EMBEDDINGS, export.part_name(0)))
        del driver_scorer, item_table
        timings["item_embeddings"] = time.monotonic() - t0

        recall = None
        if cfg.retrieval == "faiss":
            t0 = time.monotonic()
            recall = measure_recall(inputs, cfg.k, cfg.recall_sample, vocab, policy)
            timings["recall"] = time.monotonic() - t0
            _log.info(
                "faiss recall@%d against exact on %d users: %.4f", cfg.k, recall["users"], recall["recall"]
            )

        t0 = time.monotonic()
        n_events = int(prepared.metadata["stats"].get("interactions") or 50 * n_users)
        counts = _score_users(cfg, inputs, stage, policy, n_users, n_events, owned)
        popular = np.argsort(
            -np.pad(counts["popularity"], (0, n_items + 1 - len(counts["popularity"]))), kind="stable"
        )
        export.write_fallback_part(
            stage,
            counts["fallback"],
            popular[popular > 0][: cfg.k],
            prepared.user_map,
            vocab.items,
            cfg.topk_layout,
        )
        timings["score_users"] = time.monotonic() - t0

        rows = {
            "users": n_users,
            "items": n_items,
            schema.USER_EMBEDDINGS: export.count_rows(storage.join(stage, schema.USER_EMBEDDINGS)),
            schema.ITEM_EMBEDDINGS: export.count_rows(storage.join(stage, schema.ITEM_EMBEDDINGS)),
            schema.TOPK: export.count_rows(storage.join(stage, schema.TOPK)),
        }
        # The part files are the truth: named per batch, a retried batch cannot add rows twice;
        # every user has a list: the model's, or (no item the model knows) the fallback, never both.
        written, expected = rows[schema.USER_EMBEDDINGS], n_users - counts["skipped"]
        if (
            counts["users"] + counts["skipped"] != n_users
            or len(counts["fallback"]) != counts["skipped"]
            or written != expected
            or (cfg.topk_layout == "lists" and rows[schema.TOPK] != n_users)
        ):
            raise RuntimeError(
                f"incomplete scoring: {written} user rows and {rows[schema.TOPK]} top-k rows written, "
                f"{counts['users']} scored and {counts['skipped']} given the fallback as reported by the "
                f"workers, {n_users} users in the data — nothing published"
            )
        if counts["skipped"] or counts["dropped_items"]:
            _log.info(
                "%s users have no item the model knows: they get the fallback list (the date's most popular "
                "items, source=fallback); %s history events of unknown items dropped",
                f"{counts['skipped']:,}", f"{counts['dropped_items']:,}",
            )  # fmt: skip
        timings["total"] = time.monotonic() - t_start
        storage.write_json(
            storage.join(stage, schema.MANIFEST),
            export.manifest(
                run_id=log.run_id(),
                model=cfg.model,
                checkpoint=inputs.checkpoint,
                checkpoint_fingerprint=meta.get("weights_sha256"),
                data=inputs.data,
                data_fingerprint=prepared.fingerprint,
                date=inputs.date,
                k=cfg.k,
                d=d,
                topk_layout=cfg.topk_layout,
                retrieval=cfg.retrieval,
                exclude_seen=policy,
                tables={t: workspace.table_url(inputs.run, t) for t in schema.TABLES},
                vocabulary={
                    "items_in_data": vocab.data_items,
                    "items_known_to_model": vocab.known,
                    "history_events_dropped": counts["dropped_items"],
                    "users_without_known_items": counts["skipped"],
                },
                rows=rows,
                cluster={"nodes": counts["nodes"], "scorer_actors": counts["actors"]},
                timings_s={k: round(v, 3) for k, v in timings.items()},
                retrieval_recall=recall,
                created_at=schema.created_at(),
                config={k: v for k, v in asdict(cfg).items() if k != "fault"},
            ),
        )
    _log.info(
        "scored %s users in %.1fs (%s users/s) → %s",
        f"{counts['users']:,}",
        timings["score_users"],
        f"{n_users / max(timings['score_users'], 1e-9):,.0f}",
        inputs.run,
    )
    return inputs.run


def measure_recall(inputs: _Inputs, k: int, sample: int, vocab, policy: str) -> dict[str, Any]:
    """Recall@k of the FAISS top-k against the exact one on the first `sample` users."""
    import pyarrow.parquet as pq

    from batchrec.dataset import PreparedDataset

    with storage.open_url(PreparedDataset.open(inputs.data).part_urls("sequences")[0]) as f:
        first = next(pq.ParquetFile(f).iter_batches(batch_size=sample, columns=["user_idx", "items"]))
    histories = [vocab.translate(np.asarray(h, dtype=np.int64)) for h in first.column(1).to_pylist()]
    histories = [h for h in histories if len(h)]
    batch = {"user_idx": np.arange(len(histories)), "items": histories}
    exact = Scorer(inputs.checkpoint, k=k, device="cpu", exclude_seen=policy)(batch)
    faiss_scorer = Scorer(inputs.checkpoint, k=k, device="cpu", retrieval="faiss", exclude_seen=policy)
    approx = faiss_scorer(batch)
    hits = total = 0
    for e_items, e_scores, a_items in zip(
        exact["topk_items"], exact["topk_scores"], approx["topk_items"], strict=True
    ):
        want = set(e_items[np.isfinite(e_scores)].tolist())
        hits += len(want & set(a_items.tolist()))
        total += len(want)
    return {
        "recall": hits / max(total, 1),
        "k": k,
        "users": len(histories),
        "searched_with": faiss_scorer.searched_with,
    }


def _score_users(
    cfg: ScoreConfig,
    inputs: _Inputs,
    stage: str,
    policy: str,
    n_users: int,
    n_events: int,
    owned: bool,
) -> dict[str, Any]:
    import ray

    from batchrec import cluster

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.target_max_block_size
    ctx.enable_progress_bars = False  # one progress line of our own instead
    # Read blocks of about one batch of users: a whole file in one block would be one actor task,
    # leaving the other actors idle and the progress line silent until the very end.
    bytes_per_user = 16 + 4 * n_events / max(n_users, 1)
    ctx.target_max_block_size = max(64 << 10, int(bytes_per_user * cfg.batch_size))
    before = ray.available_resources()
    ok = False
    try:
        with cluster.Watchdog(cfg.stall_timeout_s).watching() as watchdog:
            try:
                counts = _execute(
                    cfg, inputs, stage, policy, n_users, watchdog, ray.cluster_resources(), before
                )
                ok = True
                return counts
            finally:
                if not ok:
                    watchdog.stop()
    finally:
        ctx.enable_progress_bars, ctx.target_max_block_size = saved
        if not owned:  # a cluster that outlives this run gets every CPU and GPU back
            cluster.wait_released(before, timeout_s=10 if ok else 60)


def _execute(
    cfg: ScoreConfig,
    inputs: _Inputs,
    stage: str,
    policy: str,
    n_users: int,
    watchdog,
    total: dict[str, float],
    available: dict[str, float],
) -> dict[str, Any]:
    import ray

    from batchrec.dataset import PreparedDataset

    pool = pool_size(cfg, available, total)
    fs, path = storage.arrow_fs(PreparedDataset.open(inputs.data).part_urls("sequences"))
    ds = ray.data.read_parquet(path, filesystem=fs).select_columns(["user_idx", "items"])
    scorer_kwargs = {
        "k": cfg.k,
        "device": "cuda" if pool.gpus else "cpu",
        "threads": None if pool.gpus else (cfg.threads_per_worker or max(1, int(cfg.cpus_per_worker))),
        "retrieval": cfg.retrieval,
        "exclude_seen": policy,
        "fault": cfg.fault,
    }
    ds = ds.map_batches(
        ScoreWriter,
        fn_constructor_args=(inputs.checkpoint, inputs.data, stage, cfg.topk_layout, scorer_kwargs),
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(
            min_size=pool.min_size, max_size=pool.max_size, initial_size=pool.max_size
        ),
        num_gpus=pool.gpus,
        num_cpus=cfg.cpus_per_worker,
    )
    _log.info(
        "scorer actors: %d to %d × (%s CPU, %s GPU); stall timeout %s",
        pool.min_size, pool.max_size, cfg.cpus_per_worker, pool.gpus,
        f"{cfg.stall_timeout_s:g} s" if cfg.stall_timeout_s else "auto",
    )  # fmt: skip
    counts = {"users": 0, "skipped": 0, "dropped_items": 0}
    fallback: list[np.ndarray] = []
    popularity = np.zeros(0, dtype=np.int64)  # times each model item occurs in the scored histories
    nodes: set[str] = set()
    actors: set[str] = set()

    def consume() -> None:
        nonlocal popularity
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            errors = [e for e in batch["error"] if e]
            if errors:
                watchdog.stop()
                raise RuntimeError(f"a scorer failed, nothing was published: {errors[0]}")
            for key in counts:
                counts[key] += int(batch[key].sum())
            fallback.extend(batch["fallback"])
            for items, times in zip(batch["seen_items"], batch["seen_counts"], strict=True):
                if len(items):
                    popularity = np.pad(popularity, (0, max(0, int(items.max()) + 1 - len(popularity))))
                    np.add.at(popularity, items, times)
            nodes.update(batch["node"].tolist())
            actors.update(batch["actor"].tolist())
            watchdog.batch_done()
            progress.update(int(batch["users"].sum() + batch["skipped"].sum()))

    with log.Progress(n_users, "score", unit="users") as progress:
        watchdog.drive(consume, "batchrec-score")
        if watchdog.stalled:
            raise RetryableError(
                f"scoring stalled: {watchdog.stalled}; its actors were stopped and nothing was published — "
                "rerun the same command (check the cluster's free CPUs/GPUs and the scorer logs "
                "if it stalls again, or raise --stall-timeout-s)"
            )
    _log.info("scored on %d node(s) by %d scorer actor(s)", len(nodes), len(actors))
    users = np.concatenate(fallback) if fallback else np.zeros(0, np.int64)
    return {**counts, "nodes": len(nodes), "actors": len(actors), "fallback": users, "popularity": popularity}
