"""Pure FAISS helpers shared by the index stage and the scorer: build, search, exact search, recall.

Default factory rule (measured in BENCHMARKS.md, "FAISS index (issue 5)"):
    n <= EXACT_MAX_ITEMS  -> "Flat": exact, no training, and batched brute force over a catalogue
                             this small still serves > 1,000 queries/s on two cores; an
                             approximation would only cost recall.
    larger                -> "IVF{nlist},Flat", nlist = the power of two nearest 4*sqrt(n): on
                             clustered 1M x 64 embeddings recall@10 0.97 at ~45x exact QPS, where
                             SQ8/PQ lose recall and HNSW32 over inner product stalls at 0.85.
For inner product, IVF-Flat indexes use the MIPS-to-L2 reduction (`_mips_augment`), which keeps
the lists balanced on unnormalised embeddings; scores stay the exact inner products.
Search parameters (nprobe / efSearch) are tuned at build time on sample queries (user embeddings
when given) to the smallest value that reaches `RECALL_TARGET` against exact search; FAISS saves
them with the index and the index stage also records them in metadata.json.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import faiss
import numpy as np

from batchrec import schema
from batchrec.errors import UserError

EXACT_MAX_ITEMS = 50_000
RECALL_TARGET = 0.97  # on the tuning sample; leaves margin for the 0.95 goal on unseen queries
TUNE_QUERIES = 1_000
TUNE_K = 10
_METRIC_CODES = dict(zip(schema.INDEX_METRICS, (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2), strict=True))
# Candidate values per search parameter, cheapest first; the first that reaches the target wins.
_SEARCH_PARAMS = {
    "nprobe": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024),
    "efSearch": (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024),
}
_EXAMPLE_FACTORIES = "Flat, IVF1024,Flat, IVF4096,SQ8, IVF4096,PQ32, HNSW32"


@dataclass
class BuildInfo:
    """What `build_index_with_info` built, with which search parameters, and how long it took."""

    factory: str
    metric: str
    d: int
    n: int
    search_params: dict[str, int]
    tuned_recall: float | None
    train_s: float
    add_s: float
    tune_s: float
    gpu: bool


def default_factory(n: int, d: int) -> str:
    """The factory `build_index` uses when none is given (rule and reasons in the module doc)."""
    if n <= EXACT_MAX_ITEMS:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    # Each list must have enough members to train its centroid (FAISS wants >= 39 per list).
    nlist = max(16, min(nlist, n // 39))
    return f"IVF{nlist},Flat"


def metric_code(metric: str) -> int:
    if metric not in _METRIC_CODES:
        raise UserError(f"unknown metric {metric!r}", fix=f"use one of: {', '.join(_METRIC_CODES)}")
    return _METRIC_CODES[metric]


def as_matrix(x: np.ndarray, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (n, d) matrix, as FAISS requires."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise UserError(f"{what} must be a 2-D (n, d) array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def make_index(factory: str, d: int, metric: str = "ip") -> faiss.Index:
    """An empty index from a factory string; FAISS's own complaint becomes a UserError."""
    try:
        return faiss.index_factory(d, factory, metric_code(metric))
    except RuntimeError as e:
        # Drop FAISS's C++ location prefix ("Error in <function> at <file>:<line>: ") from the reason.
        reason = re.sub(r"^.*?Error in .*? at \S+:\d+: ", "", str(e).strip().splitlines()[-1])
        raise UserError(
            f"FAISS rejected the index factory {factory!r}: {reason}",
            fix=f"pass a valid factory string, e.g. {_EXAMPLE_FACTORIES} (d={d})",
        ) from e


def _train_sample(index: faiss.Index, vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Enough rows to train the coarse quantizer / codebooks, not the whole catalogue."""
    need = 65_536
    ivf = _ivf(index)
    if ivf is not None:
        need = max(need, 40 * ivf.nlist)  # FAISS warns below 39 points per centroid
    if len(vectors) <= need:
        return vectors
    return vectors[np.sort(rng.choice(len(vectors), need, replace=False))]


def _ivf(index: faiss.Index):
    if index is None:
        return None
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _tunable_param(index: faiss.Index) -> str | None:
    if _ivf(index) is not None:
        return "nprobe"
    base = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
    if hasattr(base, "hnsw"):
        return "efSearch"
    return None


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)


def _to_gpu(index: faiss.Index) -> tuple[faiss.Index, bool]:
    """Train and add on every GPU when there is one; some index types have no GPU version."""
    if faiss.get_num_gpus() == 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except (RuntimeError, AttributeError):
        return index, False


def build_index(
    vectors: np.ndarray,
    factory: str | None = None,
    metric: str = "ip",
    *,
    tune_queries: np.ndarray | None = None,
    tune_k: int = TUNE_K,
    seed: int = 0,
) -> faiss.Index:
    """Build a CPU index over `vectors` (row i = vector i) with search parameters already tuned.

    `tune_queries`: a sample of the real queries (user embeddings) to tune nprobe/efSearch on;
    without it, blends of random item pairs stand in for users.
    """
    return build_index_with_info(
        vectors, factory, metric, tune_queries=tune_queries, tune_k=tune_k, seed=seed
    )[0]


def build_index_with_info(
    vectors: np.ndarray,
    factory: str | None = None,
    metric: str = "ip",
    *,
    tune_queries: np.ndarray | None = None,
    tune_k: int = TUNE_K,
    seed: int = 0,
) -> tuple[faiss.Index, BuildInfo]:
    """`build_index`, also returning what was built and how long each step took."""
    vectors = as_matrix(vectors)
    n, d = vectors.shape
    if n == 0:
        raise UserError("no vectors to index", fix="check that the item embeddings table is not empty")
    factory = factory or default_factory(n, d)
    index = make_index(factory, d, metric)
    # Inner-product IVF lists are unbalanced and probe badly on unnormalised embeddings; the
    # MIPS-to-nearest-neighbour reduction fixes both (see `_mips_augment`).
    # Only for raw-vector lists: SQ/PQ codes trained in the augmented space score IP badly.
    mips = metric == "ip" and isinstance(faiss.downcast_index(_ivf(index)), faiss.IndexIVFFlat)
    data = vectors
    if mips:
        data = _mips_augment(vectors)
        index = make_index(factory, d + 1, "l2")
    rng = np.random.default_rng(seed)
    index, on_gpu = _to_gpu(index)
    t0 = time.perf_counter()
    if not index.is_trained:
        sample = _train_sample(index, data, rng)
        try:
            index.train(sample)
        except RuntimeError as e:
            raise UserError(
                f"FAISS could not train {factory!r} on {len(sample)} vectors: {str(e).strip().splitlines()[-1]}",
                fix=f"use a smaller index for {n} items, e.g. {default_factory(n, d)!r}",
            ) from e
    t1 = time.perf_counter()
    index.add(data)
    t2 = time.perf_counter()
    if on_gpu:
        index = faiss.index_gpu_to_cpu(index)
    if mips:
        # Lists stay assigned and probed by L2 in the augmented space, but are scanned by inner
        # product, which equals the original q.x because queries get a 0 in the extra coordinate.
        # Flat lists hold raw vectors, so switching the scan metric after `add` changes nothing stored.
        _ivf(index).metric_type = faiss.METRIC_INNER_PRODUCT
        index.metric_type = faiss.METRIC_INNER_PRODUCT
        index = _pad_queries(index, d)
    params, recall = _tune(index, vectors, tune_queries, metric, rng, tune_k)
    info = BuildInfo(
        factory=factory,
        metric=metric,
        d=d,
        n=n,
        search_params=params,
        tuned_recall=recall,
        train_s=t1 - t0,
        add_s=t2 - t1,
        tune_s=time.perf_counter() - t2,
        gpu=on_gpu,
    )
    return index, info


def _mips_augment(vectors: np.ndarray) -> np.ndarray:
    """Append sqrt(M^2 - |x|^2) (M = the largest norm): every item then has norm M, so for a query
    (q, 0) the L2-nearest item is the one with the largest q.x (Bachrach et al., RecSys 2014)."""
    norms2 = np.einsum("ij,ij->i", vectors, vectors)
    extra = np.sqrt(np.maximum(norms2.max() - norms2, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]))


def _pad_queries(inner: faiss.Index, d: int) -> faiss.Index:
    """Wrap an index over augmented (d+1) vectors so callers query it with plain d-dim vectors."""
    pad = faiss.LinearTransform(d, d + 1, False)
    a = np.zeros((d + 1, d), np.float32)
    a[:d, :d] = np.eye(d, dtype=np.float32)
    faiss.copy_array_to_vector(a.ravel(), pad.A)
    faiss.copy_array_to_vector(np.zeros(d + 1, np.float32), pad.b)
    pad.is_trained = True
    wrapped = faiss.IndexPreTransform(pad, inner)
    wrapped.own_fields = True
    inner.this.disown()
    pad.this.disown()
    # Items went into `inner` directly (already augmented), so the wrapper's count is stale.
    wrapped.ntotal = inner.ntotal
    wrapped.metric_type = faiss.METRIC_INNER_PRODUCT
    return wrapped


def _tune(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray | None,
    metric: str,
    rng: np.random.Generator,
    k: int = TUNE_K,
) -> tuple[dict[str, int], float | None]:
    """The cheapest search parameter value whose recall@k on sample queries reaches the target."""
    param = _tunable_param(index)
    if param is None:
        return {}, None
    n = len(vectors)
    if queries is None and metric == "ip":
        # A user embedding sums several tastes, so it sits between item clusters rather than on
        # one item: blends of two random items are a harder, more honest stand-in than items.
        a, b = rng.integers(0, n, size=(2, TUNE_QUERIES))
        w = rng.uniform(0.3, 1.0, size=(TUNE_QUERIES, 1)).astype(np.float32)
        queries = vectors[a] + w * vectors[b]
    elif queries is None:
        # For L2 a stand-in query is an item moved a little, so it does not find itself at distance 0.
        rows = rng.integers(0, n, size=TUNE_QUERIES)
        noise = rng.normal(0, 0.1 * float(vectors[rows].std()), size=(TUNE_QUERIES, vectors.shape[1]))
        queries = vectors[rows] + noise.astype(np.float32)
    else:
        queries = as_matrix(queries, "tuning queries")
        if len(queries) > TUNE_QUERIES:
            queries = queries[rng.choice(len(queries), TUNE_QUERIES, replace=False)]
    k = min(k, n)
    _, exact = exact_search(vectors, queries, k, metric=metric)
    limit = _ivf(index).nlist if param == "nprobe" else None
    recall = 0.0
    value = 0
    for value in _SEARCH_PARAMS[param]:
        if limit is not None and value > limit:
            value = limit
        set_search_params(index, {param: value})
        _, approx = search(index, queries, k)
        recall = recall_at_k(approx, exact, k)
        if recall >= RECALL_TARGET or value == limit:
            break
    return {param: int(value)}, recall


# Past this share of its lists probed, an IVF index scans more than brute force computes: brute
# force runs as GEMM tiles, the IVF scan vector by vector. Measured on 100k items of an untrained
# SASRec (d = 64, top-150 of 4,096 users, 2 threads): IVF1024 at nprobe 64 14.4k users/s, 128
# 8.3k, 256 4.5k; exact brute force 6k (BENCHMARKS.md, issue 17).
IVF_MAX_PROBED_SHARE = 1 / 8


def slower_than_exact(index: faiss.Index) -> str | None:
    """Why brute force would be at least as fast as this tuned index (None: it is faster)."""
    ivf = _ivf(index)
    if ivf is None or ivf.nprobe <= ivf.nlist * IVF_MAX_PROBED_SHARE:
        return None
    return f"the IVF index needs nprobe {ivf.nprobe} of its {ivf.nlist} lists to reach recall {RECALL_TARGET}"


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores (q, k) float32, rows (q, k) int64; -1 where fewer than k results exist)."""
    queries = as_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise UserError(
            f"dimension mismatch: the index holds d={index.d} vectors but the queries have d={queries.shape[1]}",
            fix="query with embeddings from the same scoring run (model) the index was built from",
        )
    if k < 1:
        raise UserError(f"k must be at least 1, got {k}")
    return index.search(queries, k)


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, metric: str = "ip"
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k (inner product by default): the reference for recall."""
    vectors = as_matrix(vectors)
    flat = faiss.IndexFlat(vectors.shape[1], metric_code(metric))
    flat.add(vectors)
    return search(flat, queries, k)


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    """Mean fraction of each query's exact top-k rows that the approximate top-k also returns."""
    approx_rows = np.asarray(approx_rows)[:, :k]
    exact_rows = np.asarray(exact_rows)[:, :k]
    if len(exact_rows) == 0:
        return 1.0
    hits = 0
    total = 0
    for a, e in zip(approx_rows, exact_rows, strict=True):
        e = e[e >= 0]
        hits += len(np.intersect1d(a[a >= 0], e, assume_unique=False))
        total += len(e)
    return hits / total if total else 1.0
