"""Training memory on Ray Train: peak RSS of each training worker with 1 and with 2 workers.

    python bench/bench_train_memory.py --users 1000000 --workers 0 1 2

Makes `--users` synthetic users (`batchrec data synth`, ~20 events each), prepares them, then
for each worker count runs one epoch of `batchrec train --workers N` (0: one process, no Ray)
as its own process and samples /proc every 0.5 s: each Ray Train worker's peak RSS (the
kernel's VmHWM, read until it exits), the driver's, and the whole process tree's summed RSS.
A worker reads only its share of the users (a Ray Data stream) and cuts only their windows, so
its peak should fall as workers are added; the driver samples the validation users.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import proctree


def _status(pid: int, key: str) -> int:
    """A /proc/PID/status figure in bytes (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd`; the peak RSS of each Ray Train worker, of the driver and of the whole tree."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: dict[int, int] = {}
    tree_peak = driver = 0
    while proc.poll() is None:
        tree = 0
        for pid in proctree.tree(proc.pid):
            tree += _status(pid, "VmRSS")
            if "RayTrainWorker" in _cmdline(pid):
                workers[pid] = max(workers.get(pid, 0), _status(pid, "VmHWM"))
        tree_peak = max(tree_peak, tree)
        driver = max(driver, _status(proc.pid, "VmHWM"))
        time.sleep(0.5)
    log = proc.stdout.read()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-4000:]}")
    return {
        "wall_s": round(time.monotonic() - t0, 1),
        "worker_peak_rss_gib": sorted(round(v / 2**30, 3) for v in workers.values()),
        "driver_peak_rss_gib": round(driver / 2**30, 3),
        "tree_peak_rss_gib": round(tree_peak / 2**30, 3),
        "log_tail": log.strip().splitlines()[-3:],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", default="/tmp/batchrec-bench-train-memory")
    a = p.parse_args()

    root = Path(a.root)
    data = root / f"prepared-{a.users}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    batchrec = [sys.executable, "-m", "batchrec"]
    if not (data / "_SUCCESS").exists():
        raw = root / f"raw-{a.users}"
        synth = [
            *batchrec,
            "data",
            "synth",
            "--out",
            str(raw),
            "--users",
            str(a.users),
            "--items",
            str(a.items),
        ]
        subprocess.run(synth, env=env, check=True)
        subprocess.run([*batchrec, "data", "prepare", str(raw), "--out", str(data)], env=env, check=True)
    results = {}
    for n in a.workers:
        out = root / f"ckpt-{n}"
        cmd = [
            *batchrec, "train", "--model", "sasrec", "--data", str(data), "--out", str(out),
            "--epochs", "1", "--dim", "16", "--max-len", "50", "--loss", "sampled", "--n-negatives", "64",
            "--batch-size", str(1024 // max(n, 1)),
            "--eval-max-users", "2000", "--device", "cpu", "--workers", str(n),
        ]  # fmt: skip
        results[n] = measure(cmd, env)
        print(json.dumps({"workers": n, **results[n]}), flush=True)
    print(f"\n{a.users:,} users, one epoch, SASRec d=16 max_len=50, sampled softmax (64 negatives):")
    for n, r in results.items():
        who = "one process (no Ray)" if n == 0 else f"{n} Ray Train worker(s)"
        print(
            f"  {who:>24}: per-worker peak RSS {r['worker_peak_rss_gib'] or '-'} GiB, driver "
            f"{r['driver_peak_rss_gib']} GiB, tree {r['tree_peak_rss_gib']} GiB, {r['wall_s']} s"
        )


if __name__ == "__main__":
    main()
