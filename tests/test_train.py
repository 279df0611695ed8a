"""`batchrec train` end to end on synthetic sequential data: quality vs popularity, resume,
warm start, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_synth_prepared, make_tiny_prepared
from typer.testing import CliRunner

from batchrec import checkpoint
from batchrec.dataset import PreparedDataset
from batchrec.train import TrainConfig, lr_factor, run
from cli import app

runner = CliRunner()
# the recipe these tests' thresholds were set with: a cosine over their few epochs ends too early
FAST = {"dim": 32, "max_len": 20, "batch_size": 64, "lr": 3e-3, "lr_schedule": "constant"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> str:
    return make_synth_prepared(tmp_path_factory.mktemp("synth"))


def _train(args: list[str]) -> str:
    r = runner.invoke(app, ["train", *args])
    assert r.exit_code == 0, r.output
    return r.stdout.strip().splitlines()[-1]


def _test_ndcg(ckpt: str, data: str) -> tuple[float, float]:
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", data, "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    return report["metrics"]["NDCG@10"], report["baseline"]["metrics"]["NDCG@10"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "loss", "epochs"),
    [("sasrec", "ce", 8), ("sasrec", "bce", 8), ("sasrec", "sampled", 8), ("sasrec", "inbatch", 8),
     ("bert4rec", "ce", 10), ("gru4rec", "ce", 8)],
)  # fmt: skip
def test_every_model_beats_popularity_twice_on_synthetic(synth, tmp_path, model, loss, epochs):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    ckpt = _train(["--model", model, "--loss", loss, "--epochs", str(epochs), "--data", synth,
                   "--out", str(tmp_path / "ckpt"), *flags])  # fmt: skip
    ndcg, pop = _test_ndcg(ckpt, synth)
    assert ndcg >= 2 * pop, (ndcg, pop)
    history = [json.loads(x) for x in (tmp_path / "ckpt.metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"] and "valid_NDCG@10" in history[0]
    meta = checkpoint.read_meta(ckpt)
    assert meta["metrics"]["status"] == "done" and meta["data"]["item_map_fingerprint"]


def test_resume_after_interruption_matches_uninterrupted_run(synth, tmp_path):
    base = dict(model="sasrec", data=synth, epochs=4, patience=10, **FAST)
    whole = run(TrainConfig(out=str(tmp_path / "whole"), **base))
    part = str(tmp_path / "part")
    run(TrainConfig(out=part, stop_after_epochs=2, **base))
    assert checkpoint.read_meta(part)["metrics"]["status"] == "training"
    assert checkpoint.load_train_state(part)["state"]["epoch"] == 2
    _train(["--resume", "--model", "sasrec", "--data", synth, "--out", part, "--epochs", "4",
            "--set", "patience=10", *[f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]])  # fmt: skip
    a = [json.loads(x) for x in Path(whole + ".metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in Path(part + ".metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    assert 0 < b[0]["seconds"] < b[1]["seconds"] < b[2]["seconds"] < b[3]["seconds"]  # counted over resumes
    assert b[-1]["valid_NDCG@10"] == pytest.approx(a[-1]["valid_NDCG@10"], abs=1e-3)
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-3)


def test_warm_start_carries_item_vectors_by_external_id(synth, tmp_path):
    old_data = make_tiny_prepared(str(tmp_path / "old"), n_items=30, seed=1)
    old = run(TrainConfig(model="sasrec", data=old_data, out=str(tmp_path / "old-ckpt"), epochs=1, **FAST))
    # new catalogue: items i10..i39 (i0..i9 vanished, i30..i39 new), in another order
    new_data = make_tiny_prepared(str(tmp_path / "new"), n_items=40, seed=2)
    new = run(TrainConfig(model="sasrec", data=new_data, out=str(tmp_path / "new-ckpt"), epochs=1, lr=1e-9,
                          warm_start=old, **{k: v for k, v in FAST.items() if k != "lr"}))  # fmt: skip
    old_model, _ = checkpoint.load(old)
    new_model, _ = checkpoint.load(new)
    old_map, new_map = PreparedDataset.open(old_data).item_map, PreparedDataset.open(new_data).item_map
    shared = ["i3", "i17", "i29"]
    o = torch.from_numpy(old_map.to_internal(shared))
    n = torch.from_numpy(new_map.to_internal(shared))
    torch.testing.assert_close(
        new_model.item_embeddings()[n], old_model.item_embeddings()[o], atol=1e-5, rtol=0
    )
    assert np.array_equal(checkpoint.load_item_ids(new).to_pylist(), new_map.external.to_pylist())


def test_unset_epochs_lr_and_schedule_are_the_models_and_loss_defaults(tiny_prepared, tmp_path):
    small = {"dim": 8, "max_len": 5, "stop_after_epochs": 1}
    ce = run(TrainConfig(model="sasrec", data=tiny_prepared, out=str(tmp_path / "ce"), **small))
    bce = run(TrainConfig(model="sasrec", loss="bce", data=tiny_prepared, out=str(tmp_path / "bce"), **small))
    bert = run(TrainConfig(model="bert4rec", data=tiny_prepared, out=str(tmp_path / "bert"), **small))
    gru = run(TrainConfig(model="gru4rec", data=tiny_prepared, out=str(tmp_path / "gru"), **small))
    given = _train(["--model", "sasrec", "--data", tiny_prepared, "--out", str(tmp_path / "given"),
                    "--lr-schedule", "constant", "--lr", "0.001", "--stop-after-epochs", "1",
                    "--dim", "8", "--max-len", "5"])  # fmt: skip
    recorded = [checkpoint.read_meta(c)["train_config"] for c in (ce, bce, bert, gru, given)]
    assert [(r["epochs"], r["lr"], r["lr_schedule"]) for r in recorded] == [
        (30, 5e-3, "cosine"),
        (200, 2e-3, "constant"),
        (60, 5e-3, "cosine"),
        (200, 2e-3, "constant"),
        (30, 1e-3, "constant"),
    ]


def test_cosine_schedule_warms_up_for_an_epoch_then_falls_to_zero_at_the_last_epoch():
    # 2 steps an epoch, 3 epochs: warmup over steps 0-1, cosine over the 6 steps
    got = [lr_factor("cosine", step, steps_per_epoch=2, epochs=3) for step in range(7)]
    want = [0.5, 0.5 * (1 + math.cos(math.pi / 6)), 0.5 * (1 + math.cos(math.pi / 3)), 0.5, 0.25,
            0.5 * (1 + math.cos(5 * math.pi / 6)), 0.0]  # fmt: skip
    assert got == pytest.approx(want, abs=1e-12)
    assert lr_factor("constant", 5, 2, 3) == 1.0


def test_bad_input_is_one_clear_error(tiny_prepared, tmp_path):
    r = runner.invoke(app, ["train", "--model", "transformer", "--data", tiny_prepared])
    assert r.exit_code == 2 and "bert4rec" in r.stderr and "gru4rec" in r.stderr
    r = runner.invoke(app, ["train", "--loss", "hinge", "--data", tiny_prepared])
    assert r.exit_code == 2 and "inbatch" in r.stderr
    r = runner.invoke(app, ["train", "--data", tiny_prepared, "--set", "epoch=3", "--set", "lr_decay=1"])
    assert r.exit_code == 2 and "epoch:" in r.stderr and "lr_decay:" in r.stderr
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no prepared dataset" in r.stderr


def test_a_worker_shard_without_users_is_a_clear_error_not_an_arrow_one(tiny_prepared, tmp_path):
    # Ray Data may hand a Ray Train worker no block at all; it must say so, not fail in Arrow.
    from batchrec import distributed
    from batchrec.errors import UserError
    from batchrec.train import setup

    class NoBlocks:
        def iter_batches(self, batch_format):
            return iter([])

    cfg = TrainConfig(data=tiny_prepared, out=str(tmp_path / "c"), device="cpu")
    with pytest.raises(UserError, match="no user has a training history"):
        setup(cfg, distributed.Group(), shard=NoBlocks())
