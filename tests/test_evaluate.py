"""Rank metrics and the seen-item policy on hand-computed cases, and `batchrec evaluate` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_prepared
from typer.testing import CliRunner

from batchrec.ranking import coverage, mask_seen, rank_metrics, seen_policy, target_ranks
from cli import app

runner = CliRunner()
INF = float("inf")


def test_rank_metrics_hand_computed():
    m = rank_metrics(np.array([1, 3, 11]), [10])
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # ranks 1 and 3 hit
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)


def test_a_masked_target_is_a_miss_at_every_k():
    assert rank_metrics(np.array([1, INF]), [1, 1000]) == {
        "HR@1": 0.5, "NDCG@1": 0.5, "HR@1000": 0.5, "NDCG@1000": 0.5, "MRR": 0.5,
    }  # fmt: skip


def test_target_ranks_ties_count_against_the_model():
    scores = torch.tensor([[0.0, 0.5, 0.9, 0.5, 0.1], [0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0]])
    # row 0: target 3 (0.5) is behind item 2 (0.9) and tied with item 1 → rank 3
    # rows 1, 2: targets 2 and 1 are tied with two other items → rank 3, whatever their ids
    assert target_ranks(scores, torch.tensor([3, 2, 1])).tolist() == [3, 3, 3]
    assert target_ranks(torch.tensor([[-INF, -INF, 2.0]]), torch.tensor([1])).tolist() == [INF]


def test_mask_seen_history_masks_a_repeated_target_and_none_masks_only_padding():
    seen_rows, seen_items, target = torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([2])
    history = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    mask_seen(history, seen_rows, seen_items, "history")
    assert history.tolist() == [[-INF, -INF, -INF, 2.0]]
    assert target_ranks(history, target).tolist() == [INF]
    nothing = torch.tensor([[5.0, 4.0, 3.0, 2.0]])
    mask_seen(nothing, seen_rows, seen_items, "none")
    assert nothing.tolist() == [[-INF, 4.0, 3.0, 2.0]]
    assert target_ranks(nothing, target).tolist() == [2]


def test_seen_policy_validation_and_resolution():
    from batchrec import config
    from batchrec.errors import UserError
    from batchrec.evaluate import EvaluateConfig

    assert config.from_dict(EvaluateConfig, {"exclude_seen": "none"}).exclude_seen == "none"
    with pytest.raises(UserError, match="exclude_seen: 'all' is not one of 'history', 'none'"):
        config.from_dict(EvaluateConfig, {"exclude_seen": "all"})
    assert seen_policy(None, {}) == seen_policy(None, None) == "history"  # checkpoints from before the policy
    assert seen_policy(None, {"exclude_seen": "none"}) == "none"
    assert seen_policy("history", {"exclude_seen": "none"}) == "history"


def test_coverage_counts_distinct_real_items():
    assert coverage(np.array([[1, 2], [2, 3], [0, 1]]), n_items=6) == pytest.approx(3 / 6)


def repeats_prepared(url: str) -> str:
    """Three users, four items, leave-one-out; targets that repeat a history item.

    u0 [1, 2, 1, 3], u1 [2, 3, 4, 2], u2 [1, 2, 3, 1]; train = the first two items of each, so the
    training counts are item 1: 2, item 2: 3, item 3: 1, item 4: 0. The test targets 2 (u1) and
    1 (u2) repeat their histories; the valid target 1 (u0) repeats its history."""
    import pyarrow as pa

    from batchrec.dataset import write_prepared

    histories = [[1, 2, 1, 3], [2, 3, 4, 2], [1, 2, 3, 1]]
    seqs = [
        {"user_idx": u, "items": h, "timestamps": [0, 1, 2, 3], "train_len": 2}
        for u, h in enumerate(histories)
    ]
    targets = [{"user_idx": u, "split": split, "position": pos, "item_idx": h[pos]}
               for u, h in enumerate(histories) for split, pos in (("valid", 2), ("test", 3))]  # fmt: skip
    return write_prepared(
        url, item_ids=pa.array(["a", "b", "c", "d"]), user_ids=pa.array(["u0", "u1", "u2"]),
        sequences=pa.Table.from_pylist(seqs), targets=pa.Table.from_pylist(targets), source="literal",
        params={"split": "loo"}, stats={"users": 3, "items": 4, "interactions": 12},
    )  # fmt: skip


def test_seen_policy_from_the_checkpoint_or_the_flag_and_popularity_from_train_counts(tmp_path):
    data = repeats_prepared(str(tmp_path / "data"))
    ckpt = str(tmp_path / "pop")
    r = runner.invoke(
        app, ["train", "--model", "pop", "--data", data, "--out", ckpt, "--exclude-seen", "none"]
    )
    assert r.exit_code == 0, r.output

    def evaluate(*flags: str) -> dict:
        r = runner.invoke(
            app,
            ["evaluate", "--checkpoint", ckpt, "--data", data, "--json", "--ks", "1", "--ks", "2", *flags],
        )
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    # none (the checkpoint's policy): scores 2 > 1 > 3 > 4 for everyone; targets 3, 2, 1 rank 3, 1, 2
    report = evaluate()
    assert report["exclude_seen"] == "none" and "exclude_seen=none" in report["protocol"]
    assert report["metrics"] == pytest.approx({
        "HR@1": 1 / 3, "NDCG@1": 1 / 3, "HR@2": 2 / 3, "NDCG@2": (1 + 1 / math.log2(3)) / 3,
        "MRR": (1 / 3 + 1 + 1 / 2) / 3, "Coverage@1": 1 / 4, "Coverage@2": 2 / 4,
    })  # fmt: skip
    # history counts (items of the test histories) would tie items 1 and 2 and give MRR 4/9
    assert report["baseline"]["metrics"] == report["metrics"]
    # history: u0 ranks 3 first among {3, 4}; the repeated targets of u1 and u2 are misses; the
    # lists are u0 [3, 4], u1 [1], u2 [4]
    report = evaluate("--exclude-seen", "history")
    assert (
        report["exclude_seen"] == "history"
        and "a tie between the target and another item" in report["protocol"]
    )
    assert report["metrics"] == pytest.approx({
        "HR@1": 1 / 3, "NDCG@1": 1 / 3, "HR@2": 1 / 3, "NDCG@2": 1 / 3, "MRR": 1 / 3,
        "Coverage@1": 3 / 4, "Coverage@2": 3 / 4,
    })  # fmt: skip
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", data, "--exclude-seen", "all"])
    assert r.exit_code == 2 and "'history', 'none'" in r.stderr


def test_evaluate_json_reports_model_baseline_and_protocol(tiny_prepared, tmp_path):
    ckpt = str(tmp_path / "pop")
    assert (
        runner.invoke(app, ["train", "--model", "pop", "--data", tiny_prepared, "--out", ckpt]).exit_code == 0
    )
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", tiny_prepared, "--json", "--ks", "5"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["split"] == "test" and report["users"] == 20 and "full ranking" in report["protocol"]
    assert report["exclude_seen"] == "history"
    assert set(report["metrics"]) == {"HR@5", "NDCG@5", "MRR", "Coverage@5"}
    assert report["baseline"]["model"] == "pop"
    assert report["metrics"]["HR@5"] == pytest.approx(report["baseline"]["metrics"]["HR@5"], abs=0.1)


def test_evaluate_rejects_other_data_and_corrupt_weights(tiny_prepared, tmp_path):
    ckpt = str(tmp_path / "pop")
    runner.invoke(app, ["train", "--model", "pop", "--data", tiny_prepared, "--out", ckpt])
    # other items are translated by external id (tests/test_score.py); ids of another type cannot be
    other = make_tiny_prepared(str(tmp_path / "other"), n_items=31, string_ids=False)
    r = runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", other])
    assert r.exit_code == 2 and "item ids are int64, the checkpoint's are string" in r.stderr
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
    # the reference for popularity under this protocol: HR@10 ≈ 0.084, NDCG@10 ≈ 0.044;
    # with ties counted against it (0.0449 when lower ids won them): 0.0838 / 0.0432
    assert report["metrics"]["HR@10"] == pytest.approx(0.0838, abs=5e-5)
    assert report["metrics"]["NDCG@10"] == pytest.approx(0.0432, abs=5e-5)
    assert report["baseline"]["metrics"] == report["metrics"]  # the baseline is fit on the same train events


@pytest.mark.data
def test_ml100k_time_split_popularity_baseline_counts_only_training_events(shared_data, tmp_path):
    data = str(tmp_path / "time")
    r = runner.invoke(app, ["data", "prepare", str(shared_data / "ml-100k" / "u.data"), "--out", data,
                            "--split", "time", "--min-user-count", "0", "--min-item-count", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    ckpt = str(tmp_path / "pop")
    assert runner.invoke(app, ["train", "--model", "pop", "--data", data, "--out", ckpt]).exit_code == 0
    report = json.loads(
        runner.invoke(app, ["evaluate", "--checkpoint", ckpt, "--data", data, "--json"]).stdout
    )
    # counting the test histories (events after the cut, users once per target) gave 0.0356
    assert report["baseline"]["metrics"]["NDCG@10"] == pytest.approx(0.0311, abs=5e-5)
    assert report["baseline"]["metrics"] == report["metrics"]
