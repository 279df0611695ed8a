"""The index stage: a FAISS index over a scoring run's item embeddings — build, query, eval.

Layout (see `batchrec.schema`): INDEX/index.faiss, ids.parquet (row → external item id),
metadata.json, _SUCCESS. The default INDEX is `{out}/index/dt={date}/`, beside the table
partitions of the run it indexes, published as its own staged directory after the run.
Factory choice and search-parameter tuning live in `batchrec.ann`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchrec import __version__, log, schema, storage, workspace
from batchrec.errors import UserError
from batchrec.ids import parse_id

if TYPE_CHECKING:
    import faiss

# faiss (via batchrec.ann) is imported inside the functions that need it, so that reading a job
# config that holds an IndexBuildConfig stays cheap.

_log = log.get("index")


@dataclass
class IndexBuildConfig:
    """Where the embeddings come from and where the index goes (all optional: defaults follow the run)."""

    # an item_embeddings table partition; default: the run's ({out}/item_embeddings/dt={date})
    embeddings: str | None = None
    # a scoring run ({out}/_runs/dt={date}, what `score` prints); default: the newest published one of `model`
    run: str | None = None
    out: str | None = None  # destination; default: {out}/index/dt={date}, beside the run's tables
    # FAISS index_factory string; default: Flat up to 50k items, else IVF{~4·√n},Flat
    factory: str | None = None
    metric: str = "ip"  # ip (inner product) or l2
    # queries to tune nprobe/efSearch on; default: the run's user_embeddings partition
    user_embeddings: str | None = None
    model: str = "sasrec"  # whose newest run to index when neither URL is given
    workspace: str | None = None  # workspace for default locations

    def validate(self) -> list[str]:
        return (
            []
            if self.metric in schema.INDEX_METRICS
            else [f"metric must be one of {', '.join(schema.INDEX_METRICS)}"]
        )


@dataclass
class Index:
    """A published index, loaded: the FAISS index, its row → external id map and its metadata."""

    url: str
    index: faiss.Index
    ids: pa.Array
    meta: dict[str, Any]

    @classmethod
    def open(cls, url: str) -> Index:
        import faiss

        from batchrec import ann

        if not storage.is_published(url, schema.INDEX_FILE, schema.METADATA):
            raise UserError(
                "no published FAISS index here", where=url, fix="build one with `batchrec index build`"
            )
        meta = storage.read_json(storage.join(url, schema.METADATA))
        with storage.local_path(storage.join(url, schema.INDEX_FILE)) as path:
            index = faiss.read_index(path)
        ann.set_search_params(index, meta.get("search_params", {}))
        ids = storage.read_parquet(storage.join(url, schema.INDEX_IDS)).sort_by("row").column("item_id")
        return cls(url=url, index=index, ids=ids.combine_chunks(), meta=meta)

    def row_of(self, item_id: str) -> int:
        """The index row of an external item id given as text (as typed on a command line)."""
        pos = pc.index(self.ids, parse_id(item_id, self.ids.type, "item")).as_py()
        if pos < 0:
            raise UserError(
                f"unknown item id {item_id!r}",
                where=self.url,
                fix=f"use an id from {schema.INDEX_IDS}, e.g. {', '.join(map(str, self.ids[:3].to_pylist()))}",
            )
        return pos


def latest_run(ws: str | None, model: str) -> str:
    """The newest `dt=` run of `model` whose `_SUCCESS` exists."""
    root = storage.join(workspace.outputs_root(workspace.root(ws), model), schema.RUNS_DIR)
    url = workspace.newest(root, prefix="dt=")
    if url:
        return url
    raise UserError(
        f"no published scoring run for model {model!r}",
        where=root,
        fix="run `batchrec score` first, or pass --run / --embeddings",
    )


def read_embeddings(url: str, id_col: str, *, head: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """(ids, vectors (n, d) float32) from an item_/user_embeddings Parquet table (its first `head` rows)."""
    if not storage.exists(url):
        raise UserError("no embeddings table here", where=url, fix="pass the URL of a scoring run's table")
    if head is None:
        table = storage.read_parquet(url)
    else:
        import pyarrow.dataset as pads

        fs, path = storage.url_to_fs(url)
        table = pads.dataset(path, filesystem=fs, format="parquet").head(head)
    missing = {id_col, "embedding"} - set(table.column_names)
    if missing:
        raise UserError(
            f"embeddings table lacks column(s) {sorted(missing)}",
            where=url,
            fix=f"expected columns {id_col}, embedding (see batchrec/schema.py)",
        )
    emb = table.column("embedding").combine_chunks()
    if len(emb) == 0:
        raise UserError("embeddings table is empty", where=url)
    if not pa.types.is_fixed_size_list(emb.type):
        emb = emb.cast(schema.embedding_type(len(emb[0])))
    vectors = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table.column(id_col).combine_chunks(), vectors.reshape(len(emb), emb.type.list_size)


def _resolve(cfg: IndexBuildConfig) -> tuple[str, str, str | None]:
    """(embeddings URL, output URL, tuning queries URL or None)."""
    run = cfg.run
    if cfg.embeddings:
        embeddings = cfg.embeddings
        run = run or workspace.run_of_partition(embeddings)
    else:
        run = run or latest_run(cfg.workspace, cfg.model)
        embeddings = workspace.table_url(run, schema.ITEM_EMBEDDINGS)
    out = cfg.out or workspace.index_dir(run)
    users = cfg.user_embeddings or workspace.table_url(run, schema.USER_EMBEDDINGS)
    return embeddings, out, users if storage.exists(users) else None


def build(cfg: IndexBuildConfig) -> str:
    """Build the index and publish it (index, id map, metadata, then _SUCCESS); returns its URL."""
    import faiss

    from batchrec import ann

    log.set_stage("index")
    embeddings, out, users_url = _resolve(cfg)
    t0 = time.perf_counter()
    ids, vectors = read_embeddings(embeddings, "item_id")
    tune = None
    if users_url:
        # Tuning needs a sample of users, not every user.
        _, tune = read_embeddings(users_url, "user_id", head=ann.TUNE_QUERIES * 10)
        if tune.shape[1] != vectors.shape[1]:
            raise UserError(
                f"dimension mismatch: items have d={vectors.shape[1]}, users d={tune.shape[1]}",
                where=users_url,
                fix="use item and user embeddings from the same scoring run",
            )
    factory = cfg.factory or ann.default_factory(*vectors.shape)
    _log.info(f"building {factory!r} ({cfg.metric}) over {len(ids):,} items, d={vectors.shape[1]}")
    index, info = ann.build_index_with_info(vectors, factory, cfg.metric, tune_queries=tune)
    meta = {
        "factory": info.factory,
        "metric": info.metric,
        "d": info.d,
        "n": info.n,
        "search_params": info.search_params,
        "tuned_recall@10": info.tuned_recall,
        "tuned_on": "user embeddings" if users_url else "item blends",
        "build_time_s": round(time.perf_counter() - t0, 3),
        "timings_s": {
            "train": round(info.train_s, 3),
            "add": round(info.add_s, 3),
            "tune": round(info.tune_s, 3),
        },
        "built_on_gpu": info.gpu,
        "embeddings": embeddings,
        "batchrec_version": __version__,
        "created_at": schema.created_at(),
    }
    with storage.staged_dir(out) as stage, tempfile.TemporaryDirectory(prefix="batchrec-index-") as tmp:
        local = os.path.join(tmp, schema.INDEX_FILE)
        faiss.write_index(index, local)
        storage.upload(local, storage.join(stage, schema.INDEX_FILE))
        rows = pa.table({"row": pa.array(np.arange(len(ids), dtype=np.int64)), "item_id": ids})
        storage.write_parquet(rows, storage.join(stage, schema.INDEX_IDS))
        storage.write_json(storage.join(stage, schema.METADATA), meta)
    _log.info(f"index published at {out} ({info.search_params or 'exact'}, {meta['build_time_s']}s)")
    return out


def _results(idx: Index, scores: np.ndarray, rows: np.ndarray, drop: set[int], k: int) -> list[dict]:
    keep = [(int(r), float(s)) for r, s in zip(rows, scores, strict=True) if r >= 0 and int(r) not in drop][
        :k
    ]
    ids = idx.ids.take(pa.array([r for r, _ in keep], pa.int64())).to_pylist() if keep else []
    return [{"item_id": i, "score": s} for i, (_, s) in zip(ids, keep, strict=True)]


def similar_items(idx: Index, item_id: str, k: int = 10, embeddings: str | None = None) -> list[dict]:
    """The k items nearest to `item_id` (itself excluded)."""
    from batchrec import ann

    row = idx.row_of(item_id)
    ids, vectors = read_embeddings(embeddings or idx.meta["embeddings"], "item_id")
    if len(ids) != len(idx.ids) or not ids.equals(idx.ids):
        raise UserError(
            "the item embeddings no longer match the index",
            where=embeddings or idx.meta["embeddings"],
            fix="rebuild the index, or pass --embeddings with the table it was built from",
        )
    scores, rows = ann.search(idx.index, vectors[row : row + 1], min(k + 1, idx.index.ntotal))
    return _results(idx, scores[0], rows[0], {row}, k)


def recommend(
    idx: Index, user_id: str, user_embeddings: str, k: int = 10, data: str | None = None
) -> list[dict]:
    """Top-k items for a user; with a prepared dataset, items in the user's full history are excluded."""
    from batchrec import ann

    users, vectors = read_embeddings(user_embeddings, "user_id")
    pos = pc.index(users, parse_id(user_id, users.type, "user")).as_py()
    if pos < 0:
        raise UserError(
            f"unknown user id {user_id!r}",
            where=user_embeddings,
            fix=f"use an id from its user_id column, e.g. {', '.join(map(str, users[:3].to_pylist()))}",
        )
    seen: set[int] = set()
    if data:
        seen = _seen_rows(idx, user_id, data)
    fetch = min(k + len(seen), idx.index.ntotal)
    scores, rows = ann.search(idx.index, vectors[pos : pos + 1], fetch)
    return _results(idx, scores[0], rows[0], seen, k)


def _seen_rows(idx: Index, user_id: str, data: str) -> set[int]:
    """Index rows of the items in the user's full history (external ids bridge data and index)."""
    from batchrec.dataset import PreparedDataset

    ds = PreparedDataset.open(data)
    user_idx = int(ds.user_map.to_internal([parse_id(user_id, ds.user_map.type, "user")])[0])
    user_col, offsets, items, _ = ds.flat_sequences()
    match = np.flatnonzero(user_col == user_idx)
    if not len(match):
        return set()
    r = int(match[0])
    history = ds.item_map.to_external(items[offsets[r] : offsets[r + 1]])
    if history.type != idx.ids.type:
        history = history.cast(idx.ids.type)
    pos = pc.index_in(history, value_set=idx.ids).drop_null()
    return set(pos.to_numpy().tolist())


def evaluate(
    idx: Index, queries: str, k: int = 10, sample: int = 10_000, embeddings: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """recall@k of the index against exact search on sampled user embeddings, and both QPS."""
    import faiss

    from batchrec import ann

    _, users = read_embeddings(queries, "user_id")
    if len(users) > sample:
        users = users[np.sort(np.random.default_rng(seed).choice(len(users), sample, replace=False))]
    _, items = read_embeddings(embeddings or idx.meta["embeddings"], "item_id")
    k = min(k, idx.index.ntotal)
    t = time.perf_counter()
    _, rows = ann.search(idx.index, users, k)
    index_s = time.perf_counter() - t
    exact = faiss.IndexFlat(items.shape[1], ann.metric_code(idx.meta.get("metric", "ip")))
    exact.add(items)
    t = time.perf_counter()
    _, exact_rows = ann.search(exact, users, k)
    exact_s = time.perf_counter() - t
    return {
        f"recall@{k}": round(ann.recall_at_k(rows, exact_rows, k), 4),
        "qps": round(len(users) / index_s, 1),
        "exact_qps": round(len(users) / exact_s, 1),
        "speedup": round(exact_s / index_s, 2),
        "queries": len(users),
        "k": k,
        "factory": idx.meta.get("factory"),
        "search_params": idx.meta.get("search_params", {}),
        "n": idx.index.ntotal,
    }
