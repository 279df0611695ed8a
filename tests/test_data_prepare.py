"""Ordering, ids, repeats, k-core and splits, on tiny literal logs, through `batchrec data prepare`."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from batchrec import storage
from batchrec.data import sequences
from batchrec.dataset import PreparedDataset
from cli import app

runner = CliRunner()


def _csv(tmp_path, rows: list[tuple], name: str = "log.csv") -> str:
    path = tmp_path / name
    path.write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    return str(path)


def _prepare(src: str, out: str, *args: str) -> PreparedDataset:
    res = runner.invoke(app, ["data", "prepare", src, "--out", out, "--min-user-count", "0",
                              "--min-item-count", "0", *args])  # fmt: skip
    assert res.exit_code == 0, res.output
    return PreparedDataset.open(out)


def _histories(ds: PreparedDataset) -> dict:
    """external user id → list of external item ids, in stored order."""
    users = ds.user_map.external.to_pylist()
    items = ds.item_map
    return {users[r["user_idx"]]: items.to_external(r["items"]).to_pylist() for r in ds.sequences.to_pylist()}


def test_time_order_with_stable_tie_break(tmp_path):
    src = _csv(tmp_path, [("u", "c", 5), ("u", "a", 1), ("u", "x", 3), ("u", "y", 3), ("u", "z", 3)])
    ds = _prepare(src, str(tmp_path / "out"), "--split", "full")
    assert _histories(ds) == {"u": ["a", "x", "y", "z", "c"]}
    assert ds.sequences.column("timestamps").to_pylist() == [[1, 3, 3, 3, 5]]


def test_ids_dense_first_appearance_and_original_types(tmp_path):
    src = _csv(tmp_path, [(30, 7, 1), (10, 9, 2), (30, 8, 3), (10, 7, 4)])
    ds = _prepare(src, str(tmp_path / "out"), "--split", "full")
    assert ds.user_map.external.to_pylist() == [30, 10] and ds.user_map.type == pa.int64()
    assert ds.item_map.external.to_pylist() == [7, 9, 8] and ds.item_map.type == pa.int64()
    assert ds.sequences.column("items").to_pylist() == [[1, 3], [2, 1]]
    strs = _prepare(
        _csv(tmp_path, [("b", "x", 1), ("a", "y", 2)], "s.csv"), str(tmp_path / "s"), "--split", "full"
    )
    assert strs.user_map.type == pa.string() and strs.item_map.external.to_pylist() == ["x", "y"]


def test_repeat_modes(tmp_path):
    rows = [("u", "a", 1), ("u", "a", 2), ("u", "b", 3), ("u", "a", 4), ("u", "a", 5)]
    src = _csv(tmp_path, rows)
    expected = {
        "keep": ["a", "a", "b", "a", "a"],
        "drop-consecutive": ["a", "b", "a"],
        "first": ["a", "b"],
    }
    for mode, items in expected.items():
        ds = _prepare(src, str(tmp_path / mode), "--split", "full", "--repeats", mode)
        assert _histories(ds) == {"u": items}, mode


def test_k_core_is_iterated_with_separate_thresholds():
    # Item z is rare (1 event); dropping it leaves user v with 2 events, below the user threshold:
    # one users-then-items pass would keep v, the iterated filter drops it.
    df = pl.DataFrame(
        {
            "user_id": ["u", "u", "u", "w", "w", "w", "v", "v", "v"],
            "item_id": ["x", "y", "x", "x", "y", "x", "y", "x", "z"],
            "timestamp": list(range(9)),
        }
    )
    out = sequences.k_core(sequences.order(df), min_user=3, min_item=2, where="t")
    assert sorted(set(out["user_id"].to_list())) == ["u", "w"]
    assert sorted(set(out["item_id"].to_list())) == ["x", "y"]
    only_items = sequences.k_core(sequences.order(df), min_user=0, min_item=2, where="t")
    assert "v" in only_items["user_id"].to_list() and "z" not in only_items["item_id"].to_list()


def test_loo_split_and_short_users_stay_train_only(tmp_path):
    src = _csv(
        tmp_path, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4), ("s", "a", 1), ("s", "b", 2)]
    )
    ds = _prepare(src, str(tmp_path / "out"), "--split", "loo")
    seq = {r["user_idx"]: r for r in ds.sequences.to_pylist()}
    assert seq[0]["train_len"] == 2 and seq[1]["train_len"] == 2  # u: 4 events, s: 2 events
    assert ds.targets.to_pylist() == [
        {"user_idx": 0, "split": "valid", "position": 2, "item_idx": 3},
        {"user_idx": 0, "split": "test", "position": 3, "item_idx": 4},
    ]
    assert ds.metadata["stats"]["splits"] == {"train": 4, "valid": 1, "test": 1}


def test_time_split_uses_global_quantiles(tmp_path):
    # timestamps 1..10 over two users; 0.6 / 0.8 quantiles are 6 and 8.
    rows = [("u", f"i{t}", t) for t in (1, 3, 5, 7, 9)] + [("v", f"j{t}", t) for t in (2, 4, 6, 8, 10)]
    ds = _prepare(
        _csv(tmp_path, rows), str(tmp_path / "out"), "--split", "time", "--valid-quantile", "0.6",
        "--test-quantile", "0.8",
    )  # fmt: skip
    assert ds.sequences.column("train_len").to_pylist() == [3, 3]
    got = [(t["user_idx"], t["split"], t["position"]) for t in ds.targets.to_pylist()]
    assert sorted(got) == [(0, "test", 4), (0, "valid", 3), (1, "test", 4), (1, "valid", 3)]
    # A target's history is everything before it, valid-period events included.
    items = ds.sequences.column("items").to_pylist()
    for t in ds.targets.to_pylist():
        assert items[t["user_idx"]][t["position"]] == t["item_idx"]


def test_full_split_has_no_targets(tmp_path):
    ds = _prepare(
        _csv(tmp_path, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]), str(tmp_path / "o"), "--split", "full"
    )
    assert ds.targets.num_rows == 0 and ds.sequences.column("train_len").to_pylist() == [3]
    assert ds.metadata["stats"]["splits"] == {"train": 3, "valid": 0, "test": 0}


def test_min_rating_metadata_and_stats_command(tmp_path):
    path = tmp_path / "u.data"
    path.write_text("1\t10\t5\t100\n1\t11\t1\t101\n1\t12\t4\t102\n1\t13\t4\t103\n")
    ds = _prepare(str(path), str(tmp_path / "o"), "--min-rating", "4", "--split", "full")
    assert ds.item_map.external.to_pylist() == [10, 12, 13]
    meta = ds.metadata
    assert meta["source"] == str(path) and meta["params"]["min_rating"] == 4.0 and meta["fingerprint"]
    assert meta["stats"]["interactions"] == 3 and meta["stats"]["seq_len"]["max"] == 3
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "o"), "--json"])
    out = json.loads(res.output)
    assert (out["users"], out["items"], out["interactions"]) == (1, 3, 3)
    assert out["splits"] == {"train": 3, "valid": 0, "test": 0}
    table = runner.invoke(app, ["data", "stats", str(tmp_path / "o")]).output
    assert "interactions" in table and "split train" in table


def test_stats_report_targets_that_repeat_their_history_and_train_items(tmp_path):
    # loo: u's valid target a repeats [a, b]; v's test target b repeats [b, c, d]; w's test target a
    # repeats [a, b, c]
    rows = [("u", i, t) for t, i in enumerate("abac")] + [("v", i, t) for t, i in enumerate("bcdb")]
    rows += [("w", i, t) for t, i in enumerate("abca")]
    ds = _prepare(_csv(tmp_path, rows), str(tmp_path / "o"), "--split", "loo")
    res = runner.invoke(app, ["data", "stats", str(tmp_path / "o"), "--json"])
    assert json.loads(res.output)["repeat_targets"] == {
        "valid": pytest.approx(1 / 3),
        "test": pytest.approx(2 / 3),
    }
    assert "repeat_targets test" in runner.invoke(app, ["data", "stats", str(tmp_path / "o")]).output
    assert ds.train_items().tolist() == [1, 2, 2, 3, 1, 2]  # a=1, b=2, c=3: the first two of each user


def test_default_out_in_workspace(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    src = tmp_path / "ml-100k" / "u.data"
    src.write_text("".join(f"1\t{i}\t5\t{i}\n" for i in range(5)))
    ws = tmp_path / "ws"
    res = runner.invoke(app, ["data", "prepare", str(src), "--workspace", str(ws), "--min-item-count", "0"])
    assert res.exit_code == 0, res.output
    assert PreparedDataset.open(str(ws / "prepared" / "ml-100k")).n_items == 5


def test_same_dataset_again_is_a_no_op(tmp_path):
    src = _csv(tmp_path, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)])
    first = _prepare(src, str(tmp_path / "o"))
    again = _prepare(src, str(tmp_path / "o"))
    assert (
        first.fingerprint == again.fingerprint
        and first.metadata["created_at"] == again.metadata["created_at"]
    )


@pytest.mark.s3
def test_synth_prepare_stats_on_object_storage(s3_bucket):
    raw, out = f"{s3_bucket}/raw/synth", f"{s3_bucket}/prepared/synth"
    assert (
        runner.invoke(app, ["data", "synth", "--out", raw, "--users", "40", "--items", "30"]).exit_code == 0
    )
    res = runner.invoke(app, ["data", "prepare", raw, "--out", out])
    assert res.exit_code == 0, res.output
    ds = PreparedDataset.open(out)
    assert ds.n_users == 40 and ds.metadata["stats"]["splits"]["test"] == 40
    assert json.loads(runner.invoke(app, ["data", "stats", out, "--json"]).output)["users"] == 40
    csv = f"{s3_bucket}/raw/log.csv"
    storage.write_bytes(csv, b"user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    assert json.loads(runner.invoke(app, ["data", "stats", csv, "--json"]).output)["interactions"] == 3


def test_length_stats_from_counts_are_numpy_percentiles():
    # lengths 1, 2, 2, 10 as counts per length: additive over parts, same figures as np.percentile
    stats = sequences.length_stats(np.bincount([1, 2, 2, 10]))
    assert stats == {"min": 1, "p5": 1.15, "p25": 1.75, "p50": 2.0, "p75": 4.0, "p90": 7.6, "p95": 8.8,
                     "p99": 9.76, "max": 10, "mean": 3.75}  # fmt: skip
    assert sequences.length_stats(np.zeros(3, dtype=np.int64)) == {}
