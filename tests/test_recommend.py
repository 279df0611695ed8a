"""`batchrec recommend`: a user's history and top-k, from a published run (exactly the published
row) or from a checkpoint and a history on the command line; titles from every side-file format."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_tiny_prepared, make_untrained_sasrec
from typer.testing import CliRunner

from batchrec import schema, storage, workspace
from batchrec.dataset import PreparedDataset
from batchrec.recommend import read_titles
from cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "u.item",
            "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|GoldenEye (1995)|01-Jan-1995||http://y|0|1\n",
        ),
        ("movies.dat", "1::Toy Story (1995)::Animation|Comedy\n2::GoldenEye (1995)::Action\n"),
        (
            "ml.item",
            "item_id:token\tmovie_title:token_seq\trelease_year:token\n1\tToy Story (1995)\t1995\n"
            "2\tGoldenEye (1995)\t1995\n",
        ),  # fmt: skip
        ("items.csv", 'movieId,title,genres\n1,"Toy Story (1995)",Comedy\n2,GoldenEye (1995),Action\n'),
    ],
)
def test_titles_from_every_side_file_format(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    assert read_titles(str(path)) == {"1": "Toy Story (1995)", "2": "GoldenEye (1995)"}


def test_titles_from_parquet_and_a_clear_error_without_a_title_column(tmp_path):
    pq.write_table(pa.table({"item_id": [1, 2], "name": ["a", "b"]}), tmp_path / "t.parquet")
    assert read_titles(str(tmp_path / "t.parquet")) == {"1": "a", "2": "b"}
    (tmp_path / "bad.csv").write_text("item_id,genre\n1,x\n")
    res = runner.invoke(
        app, ["recommend", "--checkpoint", "x", "--history", "1", "--items", str(tmp_path / "bad.csv")]
    )
    assert res.exit_code == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    data = make_tiny_prepared(str(root / "data"), n_users=20, n_items=30)
    ckpt = make_untrained_sasrec(str(root / "ckpt"), data, dim=8)
    titles = root / "items.csv"
    titles.write_text("item_id,title\n" + "".join(f"i{i},Title {i}\n" for i in range(30)))
    return data, ckpt, str(titles)


def test_from_a_checkpoint_and_a_history_unknown_items_named(trained):
    _, ckpt, titles = trained
    args = [
        "recommend",
        "--checkpoint",
        ckpt,
        "--history",
        "i3,i7,nope",
        "--k",
        "5",
        "--items",
        titles,
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [h["item_id"] for h in out["history"]] == ["i3", "i7"]
    recs = out["recommendations"]
    assert [r["rank"] for r in recs] == [1, 2, 3, 4, 5]
    assert not {"i3", "i7"} & {r["item_id"] for r in recs}  # the checkpoint's policy: history excluded
    assert all(r["title"] == f"Title {r['item_id'][1:]}" for r in recs)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    assert "nope" in res.stderr

    table = runner.invoke(app, ["recommend", "--checkpoint", ckpt, "--history", "i3,i7", "--items", titles])
    assert table.exit_code == 0 and "Title 3" in table.stdout and "rank" in table.stdout

    none_known = runner.invoke(app, ["recommend", "--checkpoint", ckpt, "--history", "x,y"])
    assert none_known.exit_code == 2 and "no item of the history is known" in none_known.stderr
    missing = runner.invoke(
        app, ["recommend", "--checkpoint", ckpt, "--history", "i3", "--items", "/nonexistent/u.item"]
    )
    assert missing.exit_code == 2 and missing.stderr.startswith("error: no item file here")


def test_needs_a_run_or_a_checkpoint():
    res = runner.invoke(app, ["recommend", "--user", "u1"])
    assert res.exit_code == 2 and "either run" in res.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_from_a_published_run_is_exactly_the_published_row(trained, tmp_path):
    from batchrec.score import ScoreConfig
    from batchrec.score import run as score

    data, ckpt, titles = trained
    run = score(ScoreConfig(checkpoint=ckpt, data=data, out=str(tmp_path / "out"), date="2026-11-24", k=6))
    res = runner.invoke(
        app, ["recommend", "--run", run, "--user", "u4", "--items", titles, "--json", "--recent", "3"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    published = storage.read_parquet(workspace.table_url(run, schema.TOPK)).to_pylist()
    (row,) = [r for r in published if r["user_id"] == "u4"]
    assert [r["item_id"] for r in out["recommendations"]] == row["item_ids"][:10]
    assert [r["score"] for r in out["recommendations"]] == pytest.approx(row["scores"][:10])
    ds = PreparedDataset.open(data)
    seq = [r for r in ds.sequences.to_pylist() if r["user_idx"] == ds.user_map.to_internal(["u4"])[0]][0]
    assert [h["item_id"] for h in out["history"]] == ds.item_map.to_external(seq["items"][-3:]).to_pylist()
    assert out["history"][0]["title"].startswith("Title ")
    missing = runner.invoke(app, ["recommend", "--run", run, "--user", "nobody"])
    assert missing.exit_code == 2
