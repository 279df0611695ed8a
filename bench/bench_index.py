"""FAISS index benchmark: factories on a clustered synthetic catalogue, against exact search.

    python bench/bench_index.py [--n 1000000] [--d 64] [--queries 10000] [--factories F;F;…]

Items come from a Gaussian mixture shaped like trained recommender embeddings: a few thousand
centres with a decaying spectrum, Zipf-distributed cluster sizes (a few huge genres, a long tail)
and per-cluster anisotropic scales. User queries sit near item clusters, drawn by the same Zipf
popularity and blended from one to three clusters (mixed tastes). Exact = faiss IndexFlatIP on
the same 10k query batch; every index is searched with the same batch (batched, not one by one).
Search parameters (nprobe / efSearch) are the ones `ann.build_index` tuned at build time on 1k
other users (recall target 0.97 there).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from batchrec import ann

DEFAULT_FACTORIES = "Flat;IVF1024,Flat;DEFAULT;IVF4096,SQ8;IVF4096,PQ32;HNSW32"


def clustered(n: int, d: int, n_users: int, centres: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    spectrum = (1.0 / np.sqrt(np.arange(1, d + 1))).astype(np.float32)  # a few dominant directions
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)
    centre_vecs = (rng.normal(size=(centres, d)).astype(np.float32) * spectrum) @ rotation
    popularity = 1.0 / np.arange(1, centres + 1) ** 1.05
    popularity /= popularity.sum()
    scales = np.exp(rng.normal(-1.2, 0.5, size=(centres, d))).astype(np.float32) * spectrum.mean()

    items = np.empty((n, d), np.float32)
    cluster = rng.choice(centres, size=n, p=popularity)
    for start in range(0, n, 200_000):
        c = cluster[start : start + 200_000]
        noise = rng.normal(size=(len(c), d)).astype(np.float32)
        items[start : start + len(c)] = centre_vecs[c] + noise * scales[c]

    mix = rng.integers(1, 4, size=n_users)
    users = np.zeros((n_users, d), np.float32)
    for j in range(3):
        c = rng.choice(centres, size=n_users, p=popularity)
        w = np.where(mix > j, rng.uniform(0.3, 1.0, size=n_users), 0.0).astype(np.float32)
        users += w[:, None] * (centre_vecs[c] + rng.normal(size=(n_users, d)).astype(np.float32) * scales[c])
    return items, users


def timed_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    _, rows = ann.search(index, queries, k)
    return rows, len(queries) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--centres", type=int, default=3_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--factories", default=DEFAULT_FACTORIES, help="';'-separated; DEFAULT = the rule's pick")
    args = p.parse_args()
    faiss.omp_set_num_threads(args.threads)

    t = time.perf_counter()
    items, users = clustered(args.n, args.d, args.queries + ann.TUNE_QUERIES, args.centres, seed=0)
    # As `batchrec index build` does with a run's user embeddings: tune on some users, measure on others.
    tune_users, users = users[: ann.TUNE_QUERIES], users[ann.TUNE_QUERIES :]
    print(f"data: {args.n} items x d={args.d}, {args.queries} user queries ({time.perf_counter() - t:.1f}s)")

    exact = faiss.IndexFlatIP(args.d)
    exact.add(items)
    exact_rows, exact_qps = timed_search(exact, users, args.k)
    print(f"exact IndexFlatIP, batched {args.queries} queries: {exact_qps:,.0f} QPS")
    del exact

    print("| factory | search params | build s | index MiB | recall@10 | QPS | exact QPS | QPS / exact |")
    print("|---|---|---|---|---|---|---|---|")
    for factory in args.factories.split(";"):
        name = ann.default_factory(args.n, args.d) if factory == "DEFAULT" else factory
        t = time.perf_counter()
        index, info = ann.build_index_with_info(items, name, "ip", tune_queries=tune_users)
        build_s = time.perf_counter() - t
        mib = len(faiss.serialize_index(index)) / 2**20
        rows, qps = timed_search(index, users, args.k)
        recall = ann.recall_at_k(rows, exact_rows, args.k)
        params = ",".join(f"{k}={v}" for k, v in info.search_params.items()) or "-"
        label = f"{name} (default)" if factory == "DEFAULT" else name
        print(
            f"| {label} | {params} | {build_s:.1f} | {mib:.0f} | {recall:.3f} | {qps:,.0f} | "
            f"{exact_qps:,.0f} | {qps / exact_qps:.1f}x |",
            flush=True,
        )
        del index


if __name__ == "__main__":
    main()
