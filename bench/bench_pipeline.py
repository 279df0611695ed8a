"""python bench/bench_pipeline.py [--job jobs/quickstart.yaml]

Times `batchrec run` end to end in a fresh workspace, then the same date again (everything
published: nothing to do), and prints one line per figure for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time

DATE = "2026-11-23"


def timed_run(job: str, ws: str) -> tuple[float, str]:
    env = {**os.environ, "BATCHREC_WORKSPACE": ws}
    t0 = time.monotonic()
    out = subprocess.run(
        ["batchrec", "run", job, "--date", DATE], env=env, capture_output=True, text=True, check=True
    ).stdout
    return time.monotonic() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="jobs/quickstart.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as ws:
        first, summary = timed_run(args.job, ws)
        second, again = timed_run(args.job, ws)
    print(summary)
    print(f"fresh run, wall clock:          {first:7.1f} s  (floor: 300 s = the 5-minute quickstart budget)")
    print(
        f"second run, same date (no-op):  {second:7.1f} s  ({'all skipped' if ' ran ' not in again else 'WORK DONE'})"
    )


if __name__ == "__main__":
    main()
