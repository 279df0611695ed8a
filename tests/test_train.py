"""`batchrec train` end to end on synthetic sequential data: quality vs popularity, resume,
warm start, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_synth_prepared, make_tiny_prepared
from typer.testing import CliRunner

from batchrec import checkpoint
from batchrec.dataset import PreparedDataset
from batchrec.train import TrainConfig, run
from cli import app

runner = CliRunner()
FAST = {"dim": 32, "max_len": 20, "batch_size": 64, "lr": 3e-3}


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
