"""Wall time and peak RSS of `batchrec data synth` + `batchrec data prepare` at a given size.

    python bench/bench_data.py                      # 1M users x 100k items x ~50M events
    python bench/bench_data.py --users 50000 --items 5000 --avg-len 40

Each command runs as its own child process under a fresh Python parent, so the parent's
RUSAGE_CHILDREN maximum is that command's peak RSS alone. Target (issue 2): both together
under 10 minutes and under 8 GB peak RSS at full size on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile

_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "rc = subprocess.call(sys.argv[1:], stdout=sys.stderr)\n"
    "wall = time.perf_counter() - t\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rc': rc, 'wall_s': wall, 'peak_rss_gb': rss / 1024**2}))\n"
)


def measure(cmd: list[str]) -> dict:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], stdout=subprocess.PIPE, text=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["rc"]:
        raise SystemExit(f"command failed with exit code {out['rc']}: {' '.join(cmd)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--avg-len", type=float, default=50.0)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed after)")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-data-")
    raw, prepared = f"{work}/raw", f"{work}/prepared"
    try:
        synth = measure(
            ["batchrec", "data", "synth", "--out", raw, "--users", str(args.users), "--items", str(args.items),
             "--avg-len", str(args.avg_len)]
        )  # fmt: skip
        prep = measure(["batchrec", "data", "prepare", raw, "--out", prepared, "--force"])
        stats = json.loads(
            subprocess.run(
                ["batchrec", "data", "stats", prepared, "--json"], check=True, capture_output=True, text=True
            ).stdout
        )
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    total = synth["wall_s"] + prep["wall_s"]
    peak = max(synth["peak_rss_gb"], prep["peak_rss_gb"])
    print(f"size: {args.users:,} users x {args.items:,} items, {stats['interactions']:,} events after 5-core")
    print(f"synth:   {synth['wall_s']:7.1f} s  peak RSS {synth['peak_rss_gb']:.2f} GB")
    print(f"prepare: {prep['wall_s']:7.1f} s  peak RSS {prep['peak_rss_gb']:.2f} GB")
    print(f"total:   {total:7.1f} s  (target 600 s, ratio {total / 600:.2f});  "
          f"peak {peak:.2f} GB (target 8 GB, ratio {peak / 8:.2f})")  # fmt: skip
    print(f"prepare throughput: {stats['interactions'] / prep['wall_s'] / 1e6:.2f} M events/s")


if __name__ == "__main__":
    main()
