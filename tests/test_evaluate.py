"""Metric functions on hand-computed cases, and `batchrec evaluate` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from batchrec.evaluate import coverage, exclude_seen, left_padded, ranges, rank_metrics, target_ranks
from cli import app

runner = CliRunner()


def test_rank_metrics_hand_computed():
    m = rank_metrics(np.array([1, 3, 11]), [10])
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # ranks 1 and 3 hit
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


def test_target_ranks_ties_never_flatter():
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.5, 0.1], [0.0, 1.0, 1.0, 1.0, 0.0]])
    # row 0: target 3 (0.5) is behind item 2 (0.9) and tied item 1 (lower id) → rank 3
    # row 1: target 2 tied with 1 (lower id, ahead) and 3 (higher id, behind) → rank 2
    assert target_ranks(scores, torch.tensor([3, 2])).tolist() == [3, 2]


def test_exclude_seen_keeps_target_and_masks_padding():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    exclude_seen(scores, torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([2]))
    assert scores.tolist() == [[float("-inf"), float("-inf"), 3.0, 2.0]]
    assert target_ranks(scores, torch.tensor([2])).tolist() == [1]


def test_coverage_counts_distinct_real_items():
    assert coverage(np.array([[1, 2], [2, 3], [0, 1]]), n_items=6) == pytest.approx(3 / 6)


def test_left_padded_and_ranges():
    items = np.arange(10, 20)
    assert left_padded(items, np.array([0, 5]), np.array([2, 10]), 3).tolist() == [[0, 10, 11], [17, 18, 19]]
    assert ranges(np.array([2, 7]), np.array([4, 7])).tolist() == [2, 3]


def test_evaluate_json_reports_model_baseline_and_protocol(tiny_prepared, tmp_path):
    ckpt = str(tmp_path / "pop")
    assert (
        runner.invoke(app, ["train", "--model", "pop", "--data", tiny_prepared, "--out", ckpt]).exit_code == 0
    )
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", tiny_prepared, "--json", "--k", "5"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["split"] == "test" and report["users"] == 20 and "full ranking" in report["protocol"]
    assert set(report["metrics"]) == {"HR@5", "NDCG@5", "MRR", "Coverage@5"}
    assert report["baseline"]["model"] == "pop"
    assert report["metrics"]["HR@5"] == pytest.approx(report["baseline"]["metrics"]["HR@5"], abs=0.1)


def test_evaluate_rejects_other_data_and_corrupt_weights(tiny_prepared, tmp_path):
    from tests.conftest import make_tiny_prepared

    ckpt = str(tmp_path / "pop")
    runner.invoke(app, ["train", "--model", "pop", "--data", tiny_prepared, "--out", ckpt])
    other = make_tiny_prepared(str(tmp_path / "other"), n_items=31)
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", other])
    assert r.exit_code == 2 and "item id map" in r.stderr
    weights = tmp_path / "pop" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:10])
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", tiny_prepared])
    assert r.exit_code == 2 and "truncated or corrupt" in r.stderr
    r = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--data", tiny_prepared])
    assert r.exit_code == 2 and "no checkpoint here" in r.stderr


@pytest.mark.data
def test_ml100k_protocol_and_popularity_reference(shared_data, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from ml100k import prepare_ml100k

    data = prepare_ml100k(shared_data / "ml-100k" / "u.data", str(tmp_path / "ml100k"))
    ckpt = str(tmp_path / "pop")
    assert runner.invoke(app, ["train", "--model", "pop", "--data", data, "--out", ckpt]).exit_code == 0
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", data, "--json"])
    report = json.loads(r.stdout)
    assert report["users"] == 943 and "1682 items" in report["protocol"]
    # the reference for popularity under this protocol: HR@10 ≈ 0.084, NDCG@10 ≈ 0.044
    assert report["metrics"]["HR@10"] == pytest.approx(0.084, abs=0.005)
    assert report["metrics"]["NDCG@10"] == pytest.approx(0.044, abs=0.003)
