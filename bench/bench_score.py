"""Scoring throughput and memory: synthetic users × items, random SASRec, exact top-k, end to end.

    python bench/bench_score.py --users 250000 --items 100000 --dim 64 --k 100
    python bench/bench_score.py --users 1000000 --items 100000 --dim 64 --k 100
    python bench/bench_score.py --users 1000000 --items 100000 --dim 64 --k 100 --floor

`--floor` also times, in the same run and before scoring, what the figure is compared with: a
plain `user_chunk @ items.T` + `torch.topk` loop over the same item vectors (users/s, no encoding,
no masking, no writing) and the GEMM rate (GFLOP/s, fp32 and bf16), and prints each ratio.

Prints users/s end to end (Ray start to published `_SUCCESS`) and the peak RSS and PSS of the
whole process tree (this process + raylet, object store, Ray workers), sampled from /proc: RSS
every 0.5 s, PSS every 5 s (reading it is not free). PSS splits shared pages (the object store)
among the processes mapping them, so it does not count them twice; RSS summed over processes
does, and is the pessimistic figure.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import proctree
import pyarrow as pa

from batchrec import checkpoint, schema, storage
from batchrec.dataset import PreparedDataset, write_prepared
from batchrec.models import build
from batchrec.score import ScoreConfig, run


def make_data(url: str, n_users: int, n_items: int, seed: int = 0) -> str:
    """Histories of 5..50 uniformly random items — written directly, no ingest."""
    if os.path.exists(os.path.join(url, "_SUCCESS")):
        return url
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 51, n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    items = rng.integers(1, n_items + 1, int(offsets[-1]), dtype=np.int32)
    sequences = pa.table(
        {
            "user_idx": pa.array(np.arange(n_users, dtype=np.int32)),
            "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(items)),
            "timestamps": pa.ListArray.from_arrays(
                pa.array(offsets), pa.array(np.arange(len(items), dtype=np.int64))
            ),
            "train_len": pa.array(lengths.astype(np.int32)),
        }
    )
    return write_prepared(
        url,
        item_ids=pa.array(np.arange(n_items, dtype=np.int64) + 1_000_000),
        user_ids=pa.array(np.arange(n_users, dtype=np.int64)),
        sequences=sequences,
        targets=schema.TARGETS_SCHEMA.empty_table(),
        source="bench-synthetic",
        params={"seed": seed},
        stats={"users": n_users, "items": n_items, "interactions": int(offsets[-1])},
    )


def make_checkpoint(url: str, data_url: str, dim: int) -> str:
    prepared = PreparedDataset.open(data_url)
    model = build("sasrec", prepared.n_items, {"dim": dim})
    ref = prepared.reference()
    return checkpoint.save(url, model, data=ref)


def _tree_rss(root: int) -> int:
    """RSS in bytes summed over `root` and every descendant, from the kernel's counters (statm)."""
    page, rss = os.sysconf("SC_PAGE_SIZE"), 0
    for pid in proctree.tree(root):
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * page
        except OSError:
            continue
    return rss


def _tree_pss(root: int) -> int:
    """PSS in bytes summed over the tree. smaps_rollup walks every page table of a process, under
    its memory-map lock: at 2 Hz it cost the driver 15 % of a core and stalled the actor's page
    faults, so it is read 10× less often than RSS."""
    pss = 0
    for pid in proctree.tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except OSError:
            continue
    return pss


def _best_s(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def floors(ckpt: str, k: int, threads: int, users: int = 8192) -> dict[str, float]:
    """The plain matmul + topk loop (users/s) and square GEMM rates (GFLOP/s), `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    model, _ = checkpoint.load(ckpt)
    with torch.no_grad():
        items = model.item_embeddings().detach().float().contiguous()
    queries = torch.randn(users, items.shape[1])

    def plain() -> None:
        for u0 in range(0, users, 1024):
            for c0 in range(0, items.shape[0], 32768):
                (queries[u0 : u0 + 1024] @ items[c0 : c0 + 32768].T).topk(k, dim=1)

    out = {"plain_users_per_s": users / _best_s(plain, 2)}
    for name, dtype, n in (("fp32", torch.float32, 4096), ("bf16", torch.bfloat16, 1024)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[f"gemm_{name}_gflops"] = 2 * n**3 / _best_s(lambda a=a, b=b: a @ b) / 1e9
    # the scoring matmul is 2·N·d FLOP per user: the users/s the fp32 GEMM rate allows
    out["gemm_fp32_users_per_s"] = out["gemm_fp32_gflops"] * 1e9 / (2 * items.shape[0] * items.shape[1])
    torch.set_num_threads(os.cpu_count() or 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="scoring lanes (one thread each) per scorer actor",
    )
    p.add_argument("--workers", type=int, default=None, help="scorer actors (default: the job's own sizing)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--root", default="/tmp/batchrec-bench-score")
    p.add_argument("--retrieval", choices=["exact", "faiss"], default="exact")
    p.add_argument("--floor", action="store_true", help="also time the plain matmul+topk loop and GEMM rates")
    a = p.parse_args()

    base = f"{a.root}/{a.users}x{a.items}"
    t0 = time.time()
    data = make_data(f"{base}/prepared", a.users, a.items)
    ckpt = make_checkpoint(f"{base}/ckpt-d{a.dim}", data, a.dim)
    print(f"data + checkpoint: {time.time() - t0:.1f}s")
    floor = floors(ckpt, a.k, a.threads) if a.floor else {}
    for name, value in floor.items():
        print(f"floor {name}: {value:,.1f}")

    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        last, n = time.time(), 0
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(os.getpid()))
            if n % 10 == 0:
                peak[1] = max(peak[1], _tree_pss(os.getpid()))
            n += 1
            if time.time() - last > 30:  # so a run cut short still shows its memory so far
                last = time.time()
                print(
                    f"peak so far: RSS {peak[0] / 2**30:.2f} GiB, PSS {peak[1] / 2**30:.2f} GiB", flush=True
                )
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    cfg = ScoreConfig(
        model="sasrec",
        checkpoint=ckpt,
        data=data,
        out=f"{base}/run",
        k=a.k,
        batch_size=a.batch_size,
        threads_per_worker=a.threads,
        num_workers=a.workers,
        cpus_per_worker=a.cpus_per_worker,
        retrieval=a.retrieval,
        date="2026-11-23",
    )
    out = run(cfg)
    wall = time.time() - t0
    stop.set()
    sampler.join()
    print(f"out: {out}")
    rate = a.users / wall
    print(
        f"users={a.users} items={a.items} d={a.dim} k={a.k} retrieval={a.retrieval}: {wall:.1f}s end to end, "
        f"{rate:,.0f} users/s; peak tree RSS {peak[0] / 2**30:.2f} GiB, PSS {peak[1] / 2**30:.2f} GiB"
    )
    if a.retrieval == "faiss":
        manifest = storage.read_json(storage.join(out, schema.MANIFEST))
        print(f"recall against exact (manifest): {manifest['retrieval_recall']}")
    if floor:
        print(
            f"ratio to the plain matmul+topk loop: {rate / floor['plain_users_per_s']:.2f}; "
            f"to the fp32 GEMM rate's users/s: {rate / floor['gemm_fp32_users_per_s']:.2f}"
        )


if __name__ == "__main__":
    main()
