"""DDP on CPU: `torchrun --nproc_per_node=2 -m batchrec train` (gloo) against a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_synth_prepared

from batchrec import checkpoint
from batchrec.train import TrainConfig, run

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> str:
    return make_synth_prepared(tmp_path_factory.mktemp("ddp"), seed=1)


def test_two_process_gloo_training_matches_single_process(synth, tmp_path):
    out = tmp_path / "runs" / "ddp"
    out.parent.mkdir()
    common = {"epochs": 4, "dim": 32, "max_len": 20, "lr": 3e-3, "seed": 0}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "batchrec", "train",
           "--model", "sasrec", "--data", synth, "--out", str(out), "--batch-size", "32", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # only rank 0 logs and writes: one log line per epoch, one checkpoint, one metrics log
    assert sum("[train] epoch" in line and "valid NDCG" in line for line in proc.stderr.splitlines()) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["ddp", "ddp.metrics.jsonl"]
    history = [json.loads(x) for x in (out.parent / "ddp.metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"]
    model, meta = checkpoint.load(str(out))
    assert meta["train_config"]["batch_size"] == 32 and model.name == "sasrec"

    single = run(
        TrainConfig(model="sasrec", data=synth, out=str(tmp_path / "single"), batch_size=64, **common)
    )
    ddp_ndcg = meta["metrics"]["valid"]["valid_NDCG@10"]
    single_ndcg = checkpoint.read_meta(single)["metrics"]["valid"]["valid_NDCG@10"]
    assert ddp_ndcg == pytest.approx(single_ndcg, abs=0.05), (ddp_ndcg, single_ndcg)
