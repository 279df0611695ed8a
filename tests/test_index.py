"""FAISS index: ann helpers on tiny literal data, and `batchrec index build|query|eval` through the CLI."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pytest
from conftest import make_tiny_prepared
from typer.testing import CliRunner

from batchrec import ann, schema, storage, workspace
from cli import app

runner = CliRunner()
D = 16


def clustered(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    """Draws from one fixed 20-centre mixture (`seed` picks the draws, not the centres)."""
    centres = np.random.default_rng(0).normal(size=(20, d)).astype(np.float32)
    rng = np.random.default_rng(seed + 1)
    return centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)


def write_run(
    out: str,
    *,
    date: str = "2026-11-23",
    n_items: int = 30,
    n_users: int = 20,
    string_ids: bool = True,
    d: int = D,
) -> str:
    """A published scoring run under the tables' root `out`, holding only the two embedding tables
    (ids match make_tiny_prepared); returns the run's URL."""
    run = workspace.score_run(out, date)
    items = (
        pa.array([f"i{i}" for i in range(n_items)]) if string_ids else pa.array(np.arange(100, 100 + n_items))
    )
    users = (
        pa.array([f"u{u}" for u in range(n_users)])
        if string_ids
        else pa.array(np.arange(1000, 1000 + n_users))
    )
    for name, ids, vecs, make in (
        (schema.ITEM_EMBEDDINGS, items, clustered(n_items, d, 1), schema.item_embeddings_schema),
        (schema.USER_EMBEDDINGS, users, clustered(n_users, d, 2), schema.user_embeddings_schema),
    ):
        emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), d)
        table = pa.Table.from_arrays([ids, emb], schema=make(ids.type, d))
        storage.write_parquet(table, storage.join(workspace.table_url(run, name), "part-0.parquet"))
    storage.write_bytes(storage.join(run, storage.SUCCESS), b"")
    return run


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def user_error(*args: str) -> str:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("error:") == 1, result.stderr
    return result.stderr


# --- ann helpers --------------------------------------------------------------------------------


def test_default_factory_rule():
    assert ann.default_factory(1_000, 64) == "Flat"
    assert ann.default_factory(ann.EXACT_MAX_ITEMS, 64) == "Flat"
    assert ann.default_factory(1_000_000, 64) == "IVF4096,Flat"
    assert ann.default_factory(100_000, 64) == "IVF1024,Flat"


def test_flat_is_exact():
    x, q = clustered(500), clustered(50, seed=9)
    scores, rows = ann.search(ann.build_index(x, "Flat"), q, 10)
    exact_scores, exact_rows = ann.exact_search(x, q, 10)
    assert ann.recall_at_k(rows, exact_rows, 10) == 1.0
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5)


# HNSW over raw inner product navigates poorly on unnormalised vectors (see BENCHMARKS.md): only
# checked to build and tune in test_text_output_and_explicit_locations.
@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQ8"])
def test_approximate_factories_reach_recall_with_true_ip_scores(factory):
    x, q = clustered(3000), clustered(200, seed=9)
    index, info = ann.build_index_with_info(x, factory, tune_queries=clustered(200, seed=5))
    assert info.search_params and index.ntotal == 3000 and index.d == D
    scores, rows = ann.search(index, q, 10)
    _, exact_rows = ann.exact_search(x, q, 10)
    assert ann.recall_at_k(rows, exact_rows, 10) >= 0.9
    if factory.endswith(",Flat"):  # raw vectors: scores are the exact inner products
        np.testing.assert_allclose(scores[:, 0], np.einsum("ij,ij->i", q, x[rows[:, 0]]), rtol=1e-4)


def test_an_ivf_index_probing_more_than_an_eighth_of_its_lists_is_slower_than_exact():
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    index = ann.build_index(x, "IVF16,Flat")
    ann.set_search_params(index, {"nprobe": 2})
    assert ann.slower_than_exact(index) is None
    ann.set_search_params(index, {"nprobe": 3})
    assert ann.slower_than_exact(index) == "the IVF index needs nprobe 3 of its 16 lists to reach recall 0.97"
    assert ann.slower_than_exact(ann.build_index(x, "Flat")) is None


def test_l2_metric():
    x, q = clustered(2000), clustered(50, seed=9)
    _, rows = ann.search(ann.build_index(x, "IVF16,Flat", "l2"), q, 5)
    _, exact = ann.exact_search(x, q, 5, metric="l2")
    assert ann.recall_at_k(rows, exact, 5) >= 0.9


def test_recall_at_k_counts_overlap():
    assert ann.recall_at_k(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 1], [4, 9, 8]]), 3) == 4 / 6


def test_ann_bad_inputs():
    x = clustered(100)
    with pytest.raises(ann.UserError, match="could not parse.*e.g. Flat"):
        ann.build_index(x, "IVF12x,Flat")
    with pytest.raises(ann.UserError, match="dimension mismatch.*d=16.*d=8"):
        ann.search(ann.build_index(x, "Flat"), np.zeros((1, 8), np.float32), 3)


# --- CLI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("string_ids", [True, False], ids=["string-ids", "int-ids"])
def test_build_query_eval_round_trip(tmp_path, string_ids):
    run = write_run(str(tmp_path / "run"), string_ids=string_ids)
    out = ok("index", "build", "--run", run).strip()
    assert out == str(tmp_path / "run" / "index" / "dt=2026-11-23") and storage.is_published(out)
    meta = storage.read_json(storage.join(out, schema.METADATA))
    assert meta["factory"] == "Flat" and meta["n"] == 30 and meta["d"] == D and meta["metric"] == "ip"
    ids = storage.read_parquet(storage.join(out, schema.INDEX_IDS))
    assert ids.column("item_id").type == (pa.string() if string_ids else pa.int64())

    item = "i3" if string_ids else "103"
    res = json.loads(ok("index", "query", "--index", out, "--item", item, "--k", "5", "--json"))["results"]
    assert len(res) == 5 and str(item) not in [str(r["item_id"]) for r in res]
    assert all(isinstance(r["item_id"], str if string_ids else int) for r in res)
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)

    user = "u4" if string_ids else "1004"
    users = workspace.table_url(run, schema.USER_EMBEDDINGS)
    res = json.loads(
        ok("index", "query", "--index", out, "--user", user, "--user-embeddings", users, "--json")
    )
    assert len(res["results"]) == 10

    ev = json.loads(ok("index", "eval", "--index", out, "--queries", users, "--json"))
    assert ev["recall@10"] == 1.0 and ev["qps"] > 0 and ev["exact_qps"] > 0 and ev["queries"] == 20


@pytest.mark.parametrize("string_ids", [True, False], ids=["string-ids", "int-ids"])
def test_query_excludes_seen_items(tmp_path, string_ids):
    data = make_tiny_prepared(str(tmp_path / "prepared"), string_ids=string_ids)
    run = write_run(str(tmp_path / "run"), string_ids=string_ids)
    out = ok("index", "build", "--run", run).strip()
    user = "u0" if string_ids else "1000"
    args = ["index", "query", "--index", out, "--user", user, "--user-embeddings"]
    args += [workspace.table_url(run, schema.USER_EMBEDDINGS), "--k", "30", "--json", "--data", data]
    got = {r["item_id"] for r in json.loads(ok(*args))["results"]}

    from batchrec.dataset import PreparedDataset

    ds = PreparedDataset.open(data)
    _, offsets, items, _ = ds.flat_sequences()
    seen = set(ds.item_map.to_external(items[offsets[0] : offsets[1]]).to_pylist())
    assert seen and not (got & seen) and len(got) == 30 - len(seen)


def test_text_output_and_explicit_locations(tmp_path):
    run = write_run(str(tmp_path / "run"))
    out = str(tmp_path / "elsewhere" / "idx")
    emb = workspace.table_url(run, schema.ITEM_EMBEDDINGS)
    assert ok("index", "build", "--embeddings", emb, "--out", out, "--factory", "HNSW8").strip() == out
    # the run an item_embeddings partition belongs to: its user embeddings tune the search
    assert storage.read_json(storage.join(out, schema.METADATA))["tuned_on"] == "user embeddings"
    lines = ok("index", "query", "--index", out, "--item", "i0", "--k", "3").splitlines()
    assert len(lines) == 3 and lines[0].startswith("1\ti")


def test_default_is_latest_published_run(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    outputs = storage.join(str(ws), "outputs", "sasrec")
    published = write_run(outputs, date="2026-11-22")
    # a later date whose run never completed (no run record): not a candidate
    storage.write_parquet(
        pa.table({"x": [1]}), storage.join(outputs, "item_embeddings", "dt=2026-11-23", "p.parquet")
    )
    monkeypatch.setenv("BATCHREC_WORKSPACE", str(ws))
    assert ok("index", "build").strip() == workspace.index_dir(published)
    assert "no published scoring run" in user_error("index", "build", "--model", "gru4rec")


@pytest.mark.s3
def test_build_and_query_on_s3(tmp_path, s3_bucket):
    run = write_run(f"{s3_bucket}/outputs/sasrec", string_ids=False)
    out = ok("index", "build", "--run", run, "--factory", "IVF4,Flat").strip()
    assert out == f"{s3_bucket}/outputs/sasrec/index/dt=2026-11-23" and storage.is_published(out)
    assert storage.ls(f"{s3_bucket}/outputs/sasrec/index") == ["dt=2026-11-23"]  # no staging left
    res = json.loads(ok("index", "query", "--index", out, "--item", "100", "--k", "3", "--json"))
    assert len(res["results"]) == 3
    queries = workspace.table_url(run, schema.USER_EMBEDDINGS)
    ev = json.loads(ok("index", "eval", "--index", out, "--queries", queries, "--json"))
    assert ev["recall@10"] >= 0.9


def test_bad_factory_leaves_nothing(tmp_path):
    run = write_run(str(tmp_path / "run"))
    err = user_error("index", "build", "--run", run, "--factory", "IVF12x,Flat")
    assert "could not parse index string IVF12x,Flat" in err and "e.g. Flat" in err
    assert not glob.glob(str(tmp_path / "run" / "index" / "*"))
    err = user_error("index", "build", "--run", run, "--factory", "IVF1024,Flat")  # more lists than items
    assert "could not train" in err and "'Flat'" in err


def test_bad_inputs(tmp_path):
    run = write_run(str(tmp_path / "run"))
    out = ok("index", "build", "--run", run).strip()
    other = write_run(str(tmp_path / "other"), d=8)
    users = workspace.table_url(run, schema.USER_EMBEDDINGS)
    assert "dimension mismatch" in user_error(
        "index", "eval", "--index", out, "--queries", workspace.table_url(other, schema.USER_EMBEDDINGS)
    )
    assert "unknown item id 'nope'" in user_error("index", "query", "--index", out, "--item", "nope")
    assert "unknown user id 'u99'" in user_error(
        "index", "query", "--index", out, "--user", "u99", "--user-embeddings", users
    )
    assert "exactly one of --item or --user" in user_error("index", "query", "--index", out)
    assert "no published FAISS index" in user_error("index", "query", "--index", run, "--item", "i1")
    assert "metric must be one of" in user_error("index", "build", "--run", run, "--metric", "cos")
    assert "no embeddings table" in user_error("index", "build", "--embeddings", str(tmp_path / "none"))

    int_run = write_run(str(tmp_path / "int"), string_ids=False)
    int_out = ok("index", "build", "--run", int_run).strip()
    assert "not a valid int64" in user_error("index", "query", "--index", int_out, "--item", "abc")
