"""Bad input: one `error: …` line naming what, where and the fix; exit 2; nothing at the destination."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from batchrec.dataset import PreparedDataset
from cli import app

runner = CliRunner()


def _fail(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def _untouched(tmp_path, out) -> None:
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("_staging")]


def _prepare(src, out, *args: str) -> str:
    return _fail(["data", "prepare", str(src), "--out", str(out), *args])


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def test_unknown_format(tmp_path, out):
    src = tmp_path / "e.csv"
    src.write_text("user_id,item_id,timestamp\n1,2,3\n")
    msg = _prepare(src, out, "--format", "excel")
    assert "'excel' is not auto or one of" in msg and "sasrec-txt" in msg
    _untouched(tmp_path, out)


def test_undetectable_format(tmp_path, out):
    src = tmp_path / "numbers"
    src.write_text("1,2,3\n4,5,6\n")
    msg = _prepare(src, out)
    assert "cannot detect the input format" in msg and str(src) in msg and "--format" in msg
    _untouched(tmp_path, out)


def test_missing_columns_name_expected_and_found(tmp_path, out):
    src = tmp_path / "e.csv"
    src.write_text("customer,product,when\n1,2,3\n")
    msg = _prepare(src, out)
    assert "no user column: expected one of user_id" in msg
    assert "found columns: customer, product, when" in msg and "--user-col" in msg
    msg = _prepare(src, out, "--user-col", "customer", "--item-col", "sku")
    assert "column 'sku' (--item-col) not found; found columns: customer, product, when" in msg
    _untouched(tmp_path, out)


def test_null_ids(tmp_path, out):
    src = tmp_path / "e.csv"
    src.write_text("user_id,item_id,timestamp\n1,2,3\n,5,6\n")
    msg = _prepare(src, out)
    assert "1 null id(s) in column 'user_id' (first at row 1)" in msg
    _untouched(tmp_path, out)


def test_unparsable_timestamps(tmp_path, out):
    src = tmp_path / "e.csv"
    src.write_text("user_id,item_id,timestamp\n1,2,2024-01-01\n1,3,yesterday\n")
    msg = _prepare(src, out)
    assert "unparsable timestamp(s) in column 'timestamp', e.g. 'yesterday' (row 1)" in msg
    _untouched(tmp_path, out)


def test_emptied_by_k_core_names_the_filter(tmp_path, out):
    src = tmp_path / "e.csv"
    src.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n")
    msg = _prepare(src, out, "--min-user-count", "5", "--min-item-count", "0")
    assert "no interactions left: the --min-user-count 5 filter" in msg and "lower --min-user-count" in msg
    msg = _prepare(src, out, "--min-user-count", "0", "--min-item-count", "2")
    assert "the --min-item-count 2 filter" in msg
    _untouched(tmp_path, out)


def test_emptied_by_min_rating(tmp_path, out):
    src = tmp_path / "u.data"
    src.write_text("1\t2\t3\t100\n")
    msg = _prepare(src, out, "--min-rating", "4")
    assert "every rating is below --min-rating 4" in msg
    _untouched(tmp_path, out)


def test_missing_or_unreadable_input(tmp_path, out):
    msg = _prepare(tmp_path / "nope.csv", out)
    assert "input not found" in msg and "nope.csv" in msg
    assert "input not found" in _fail(["data", "stats", str(tmp_path / "nope.csv")])
    assert "not a usable storage URL" in _prepare("nosuch://bucket/x.csv", out)
    (tmp_path / "adir").mkdir()
    assert "cannot parse the input" in _prepare(tmp_path / "adir", out, "--format", "csv")
    _untouched(tmp_path, out)


def test_time_split_without_timestamps(tmp_path, out):
    src = tmp_path / "s.txt"
    src.write_text("1 1\n1 2\n1 3\n")
    msg = _prepare(src, out, "--split", "time", "--min-item-count", "0", "--min-user-count", "0")
    assert "--split time needs timestamps" in msg
    _untouched(tmp_path, out)


def test_destination_holding_another_dataset(tmp_path, out):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,4,5\n")
    b.write_text("user_id,item_id,timestamp\n1,2,3\n1,3,4\n1,5,5\n")
    zeros = ["--min-user-count", "0", "--min-item-count", "0"]
    assert runner.invoke(app, ["data", "prepare", str(a), "--out", str(out), *zeros]).exit_code == 0
    before = PreparedDataset.open(str(out)).fingerprint
    snapshot = {p: os.path.getmtime(out / p) for p in os.listdir(out)}
    msg = _prepare(b, out, *zeros)
    assert "already holds a different dataset" in msg and "--force" in msg
    assert {p: os.path.getmtime(out / p) for p in os.listdir(out)} == snapshot
    assert PreparedDataset.open(str(out)).fingerprint == before
    res = runner.invoke(app, ["data", "prepare", str(b), "--out", str(out), *zeros, "--force"])
    assert res.exit_code == 0 and PreparedDataset.open(str(out)).fingerprint != before


def test_bad_synth_and_download_options(tmp_path):
    assert "avg_len must be >= 5" in _fail(["data", "synth", "--out", str(tmp_path / "s"), "--avg-len", "1"])
    assert not (tmp_path / "s").exists()
    msg = _fail(["data", "download", "movielens-7b", "--dest", str(tmp_path / "d")])
    assert "unknown dataset 'movielens-7b'" in msg and "movielens-100k" in msg
