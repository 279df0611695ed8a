"""Wall time and peak memory of `batchrec data synth` + `batchrec data prepare`, per engine.

    python bench/bench_data.py                                   # 1M users x 100k items x ~50M events, local engine
    python bench/bench_data.py --engine both                     # the same, local then Ray, side by side
    python bench/bench_data.py --users 4000000 --engine ray      # ~200M events through the Ray engine

Each command runs as a child process; every 0.5 s the benchmark reads /proc for the whole tree
under it (for the Ray engine: driver, GCS, raylet, Ray Data workers) and records the peak of the
tree's summed RSS (shared object-store pages count once per process that maps them: the
pessimistic figure) and the peak RSS of the largest single process. With `--engine both` the
two prepares read the same synthetic input and their datasets are checked to hold the same
per-user sequences (`bench/crosscheck.py` does it user by user; here: statistics and counts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import proctree
import pyarrow.parquet as pq


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str]) -> dict:
    """Run `cmd`; wall time, peak tree RSS and peak single-process RSS (GB)."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr)
    peak = {"tree": 0, "one": 0, "processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            sizes = [_rss_kb(pid) for pid in proctree.tree(proc.pid)]
            peak["tree"] = max(peak["tree"], sum(sizes))
            peak["one"] = max(peak["one"], max(sizes, default=0))
            peak["processes"] = max(peak["processes"], len(sizes))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    if rc:
        raise SystemExit(f"command failed with exit code {rc}: {' '.join(cmd)}")
    return {
        "wall_s": wall,
        "tree_gb": peak["tree"] / 1024**2,
        "one_gb": peak["one"] / 1024**2,
        "processes": peak["processes"],
    }


def stats(url: str) -> dict:
    out = subprocess.run(
        ["batchrec", "data", "stats", url, "--json"], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--avg-len", type=float, default=50.0)
    ap.add_argument("--engine", choices=["local", "ray", "both"], default="local")
    ap.add_argument("--partitions", type=int, default=0, help="Ray engine: user partitions (0: automatic)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed after)")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-data-")
    raw = f"{work}/raw"
    engines = ["local", "ray"] if args.engine == "both" else [args.engine]
    results, found = {}, {}
    try:
        synth = measure(
            ["batchrec", "data", "synth", "--out", raw, "--users", str(args.users), "--items", str(args.items),
             "--avg-len", str(args.avg_len)]
        ) if not os.path.exists(f"{raw}/_SUCCESS") else None  # fmt: skip
        input_rows = sum(
            pq.ParquetFile(os.path.join(raw, n)).metadata.num_rows
            for n in os.listdir(raw)
            if n.endswith(".parquet")
        )
        for engine in engines:
            out = f"{work}/prepared-{engine}"
            cmd = ["batchrec", "data", "prepare", raw, "--out", out, "--force", "--engine", engine]
            if engine == "ray" and args.partitions:
                cmd += ["--partitions", str(args.partitions)]
            results[engine] = measure(cmd)
            found[engine] = stats(out)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    events_gb = input_rows * 32 / 1024**3  # user, item, timestamp, row number: 8 bytes each
    print(f"input: {args.users:,} users x {args.items:,} items, {input_rows:,} events "
          f"({events_gb:.1f} GB as four int64 columns)")  # fmt: skip
    if synth:
        print(f"synth:  {synth['wall_s']:7.1f} s  peak tree RSS {synth['tree_gb']:.2f} GB")
    for engine, r in results.items():
        s = found[engine]
        print(
            f"prepare --engine {engine}: {r['wall_s']:7.1f} s ({input_rows / r['wall_s'] / 1e6:.2f} M events/s); "
            f"peak tree RSS {r['tree_gb']:.2f} GB (limit 12 GB, ratio {r['tree_gb'] / 12:.2f}); largest process "
            f"{r['one_gb']:.2f} GB = {r['one_gb'] / events_gb:.2f}x the events; up to {r['processes']} processes; "
            f"{s['users']:,} users, {s['items']:,} items, {s['interactions']:,} events after 5-core"
        )
    if len(results) == 2:
        same = {
            k: found["local"][k] == found["ray"][k]
            for k in ("users", "items", "interactions", "seq_len", "splits")
        }
        print(f"ray / local wall time: {results['ray']['wall_s'] / results['local']['wall_s']:.2f}; "
              f"peak tree RSS ratio {results['ray']['tree_gb'] / results['local']['tree_gb']:.2f}; same statistics: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
