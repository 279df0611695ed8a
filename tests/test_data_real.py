"""Known statistics of the real MovieLens files in ../shared/data (skipped where absent)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from batchrec.dataset import PreparedDataset
from cli import app

pytestmark = pytest.mark.data
runner = CliRunner()


def _stats(url: str) -> dict:
    res = runner.invoke(app, ["data", "stats", url, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.mark.parametrize("name", ["u.data", "ml-100k.inter"])
def test_ml_100k_raw_stats(shared_data, name):
    s = _stats(str(shared_data / "ml-100k" / name))
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100000)
    assert s["seq_len"]["min"] == 20


def test_ml_100k_prepare_loo(shared_data, tmp_path):
    out = str(tmp_path / "ml-100k")
    res = runner.invoke(
        app,
        ["data", "prepare", str(shared_data / "ml-100k" / "u.data"), "--out", out, "--split", "loo",
         "--min-user-count", "0", "--min-item-count", "0"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    s = _stats(out)
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100000)
    assert s["splits"] == {"train": 100000 - 2 * 943, "valid": 943, "test": 943}
    ds = PreparedDataset.open(out)
    # Every history is in time order.
    ts = ds.sequences.column("timestamps").to_pylist()
    assert all(np.all(np.diff(t) >= 0) for t in ts)


def test_ml_1m_sasrec_txt(shared_data, tmp_path):
    src = str(shared_data / "ml-1m-sasrec" / "ml-1m.txt")
    s = _stats(src)
    assert (s["format"], s["users"], s["items"], s["interactions"]) == ("sasrec-txt", 6040, 3416, 999611)
    out = str(tmp_path / "ml-1m")
    res = runner.invoke(
        app, ["data", "prepare", src, "--out", out, "--min-user-count", "0", "--min-item-count", "0"]
    )
    assert res.exit_code == 0, res.output
    ds = PreparedDataset.open(out)
    assert ds.metadata["stats"]["splits"] == {"train": 999611 - 2 * 6040, "valid": 6040, "test": 6040}
    # SASRec's file is already dense and ordered: users map to 0..6039 in order, and each
    # user's last line is its test target.
    raw = pl.read_csv(src, separator=" ", has_header=False, new_columns=["user", "item"])
    last = raw.group_by("user", maintain_order=True).agg(pl.col("item").last())
    assert ds.user_map.external.to_pylist() == last["user"].to_list()
    rows, _, target = ds.split_targets("test")
    assert rows.tolist() == list(range(6040))
    assert ds.item_map.to_external(target).to_pylist() == last["item"].to_list()
