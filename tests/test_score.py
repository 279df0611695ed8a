"""`batchrec score`: the Scorer on one batch without Ray, the export tables, then the whole stage
on a shared local Ray (CLI, s3:// on moto, workspace defaults, faults, bad input)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_tiny_prepared
from torch import nn
from typer.testing import CliRunner

from batchrec import checkpoint, export, models, schema, storage, workspace
from batchrec.batching import left_pad
from batchrec.dataset import PreparedDataset
from batchrec.errors import RetryableError, UserError
from batchrec.ids import IdMap
from batchrec.models.base import SeqRecModel
from batchrec.score import Pool, ScoreConfig, pool_size, run
from batchrec.scorer import Scorer

# ---------------------------------------------------------------------------------------------
# A tiny test model following the shared interface (mean of item vectors → linear).


@dataclass
class TinyConfig:
    dim: int = 8
    max_len: int = 4
    seed: int = 0


class TinySeq(SeqRecModel):
    name = "tinyseq"
    Config = TinyConfig

    def __init__(self, n_items: int, config: TinyConfig | None = None):
        super().__init__()
        self.config = config or TinyConfig()
        g = torch.Generator().manual_seed(self.config.seed)
        self.emb = nn.Embedding(n_items + 1, self.config.dim, padding_idx=0)
        self.proj = nn.Linear(self.config.dim, self.config.dim)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(n_items + 1, self.config.dim, generator=g))
            self.emb.weight[0] = 0

    def encode(self, item_seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, d)
        summed = self.emb(item_seqs).sum(1)  # padding rows are zero
        return self.proj(summed / lengths.clamp(min=1)[:, None].to(summed.dtype))

    def item_embeddings(self) -> torch.Tensor:  # (N + 1, d)
        return self.emb.weight


def register_tiny() -> None:
    """Runs in every Ray worker (worker_process_setup_hook) and in this process."""
    models.MODELS.setdefault(TinySeq.name, TinySeq)


register_tiny()


def save_tiny(url: str, data_url: str, **config) -> str:
    prepared = PreparedDataset.open(data_url)
    model = TinySeq(prepared.n_items, TinyConfig(**config))
    ref = prepared.reference()
    return checkpoint.save(url, model, data=ref, item_ids=prepared.item_map.external)


def brute_force(user_vecs: np.ndarray, item_vecs: np.ndarray, histories, k: int):
    """(B, k) internal ids and scores from the full score matrix with seen items and row 0 masked."""
    s = user_vecs.astype(np.float64) @ item_vecs.astype(np.float64).T
    s[:, 0] = -np.inf
    for row, h in enumerate(histories):
        s[row, h] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1)


def assert_same_topk(got_items, got_scores, want_scores, histories, score_of, atol=1e-4):
    """Equal up to exact ties: same scores in rank order, every item unseen and scored as claimed."""
    for row, h in enumerate(histories):
        items, scores = np.asarray(got_items[row]), np.asarray(got_scores[row])
        np.testing.assert_allclose(scores, want_scores[row][: len(scores)], atol=atol)
        assert len(set(items.tolist())) == len(items)
        assert not set(items.tolist()) & set(np.asarray(h).tolist()), "a seen item was recommended"
        np.testing.assert_allclose(score_of(row, items), scores, atol=atol)


# ---------------------------------------------------------------------------------------------
# Scorer and export, without Ray.


def _tiny_batch(tmp_path) -> tuple[str, dict[str, np.ndarray]]:
    """A checkpoint (max_len 4) and one batch of its data's 25 users, histories 5..14 items long."""
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=25, n_items=40)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data, max_len=4)
    seqs = PreparedDataset.open(data).sequences
    return ckpt, {
        "user_idx": seqs.column("user_idx").to_numpy(),
        "items": np.array([np.array(h) for h in seqs.column("items").to_pylist()], dtype=object),
    }


def test_scorer_equals_bruteforce_and_masks_the_full_history(tmp_path):
    ckpt, batch = _tiny_batch(tmp_path)
    # Small chunks so the user and item chunking and the running top-k merge are exercised.
    scorer = Scorer(ckpt, k=10, user_chunk=7, item_chunk=9, encode_batch=5)
    out = scorer(batch)
    histories = [np.asarray(h) for h in batch["items"]]
    assert out["embedding"].shape == (25, 8) and out["embedding"].dtype == np.float32
    assert out["topk_items"].shape == (25, 10) and out["topk_items"].dtype == np.int32

    # The vectors are the model's on the last max_len items only …
    model, _ = checkpoint.load(ckpt)
    padded, lengths = left_pad(histories, 4)
    with torch.no_grad():
        want_vecs = model.encode(torch.from_numpy(padded), torch.from_numpy(lengths)).numpy()
    np.testing.assert_allclose(out["embedding"], want_vecs, rtol=1e-5, atol=1e-5)
    # … while the mask uses the whole history (histories here are 5..14 items long).
    items = scorer.item_vectors()
    _, want_scores = brute_force(out["embedding"], items, histories, 10)
    assert_same_topk(
        out["topk_items"],
        out["topk_scores"],
        want_scores,
        histories,
        lambda row, ids: items[ids] @ out["embedding"][row],
    )


def test_scorer_lanes_split_a_batch_each_on_one_thread_and_give_the_same_lists(tmp_path, monkeypatch):
    import faiss

    ckpt, batch = _tiny_batch(tmp_path)
    whole = Scorer(ckpt, k=10)(batch)
    shares = []
    real = Scorer._encode_and_rank

    def spy(self, histories):
        shares.append((len(histories), faiss.omp_get_max_threads(), torch.get_num_threads()))
        return real(self, histories)

    monkeypatch.setattr(Scorer, "_encode_and_rank", spy)
    before = torch.get_num_threads()
    try:
        lanes = Scorer(ckpt, k=10, threads=3)(batch)
    finally:
        torch.set_num_threads(before)
    assert sorted(shares) == [(8, 1, 1), (8, 1, 1), (9, 1, 1)]
    np.testing.assert_array_equal(lanes["user_idx"], whole["user_idx"])
    np.testing.assert_allclose(lanes["embedding"], whole["embedding"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lanes["topk_scores"], whole["topk_scores"], rtol=1e-5, atol=1e-6)
    histories = [np.asarray(h) for h in batch["items"]]
    items = Scorer(ckpt, k=10).item_vectors()
    _, want = brute_force(lanes["embedding"], items, histories, 10)
    assert_same_topk(
        lanes["topk_items"],
        lanes["topk_scores"],
        want,
        histories,
        lambda row, ids: items[ids] @ lanes["embedding"][row],
    )


def test_scorer_gives_shorter_lists_when_few_items_are_unseen(tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=3, n_items=15)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    batch = {"user_idx": np.array([0, 1]), "items": [np.arange(1, 14), np.array([3])]}
    out = Scorer(ckpt, k=5)(batch)
    assert np.isfinite(out["topk_scores"][0]).sum() == 2  # only items 14 and 15 are unseen
    assert set(out["topk_items"][0][:2].tolist()) == {14, 15}
    assert np.isfinite(out["topk_scores"][1]).all()


def test_export_tables_map_to_external_ids_in_both_layouts():
    users = IdMap(pa.array(["ann", "bob"]), offset=0)
    items = IdMap(pa.array([10, 20, 30], pa.int64()), offset=1)
    topk_items = np.array([[3, 1], [2, 0]], dtype=np.int32)
    topk_scores = np.array([[0.9, 0.5], [0.7, -np.inf]], dtype=np.float32)
    lists = export.topk_table(np.array([1, 0]), topk_items, topk_scores, users, items)
    assert lists.schema == schema.topk_schema(pa.string(), pa.int64())
    assert lists.to_pylist() == [
        {"user_id": "bob", "item_ids": [30, 10], "scores": pytest.approx([0.9, 0.5]), "source": "model"},
        {"user_id": "ann", "item_ids": [20], "scores": pytest.approx([0.7]), "source": "model"},
    ]
    exploded = export.topk_table(np.array([1, 0]), topk_items, topk_scores, users, items, "exploded")
    assert exploded.schema == schema.topk_exploded_schema(pa.string(), pa.int64())
    assert [(r["user_id"], r["rank"], r["item_id"]) for r in exploded.to_pylist()] == [
        ("bob", 0, 30),
        ("bob", 1, 10),
        ("ann", 0, 20),
    ]
    emb = export.user_embeddings_table(np.array([0]), np.ones((1, 3)), users)
    assert emb.schema == schema.user_embeddings_schema(pa.string(), 3)


def test_output_parts_dictionary_encode_only_the_source_column(tmp_path):
    users = IdMap(pa.array(np.arange(50, dtype=np.int64)), offset=0)
    items = IdMap(pa.array(np.arange(100, 140, dtype=np.int64)), offset=1)
    rng = np.random.default_rng(0)
    top = export.topk_table(
        np.arange(50), rng.integers(1, 41, (50, 5)), rng.random((50, 5), np.float32), users, items
    )
    export.write_table(top, str(tmp_path / "top.parquet"))
    meta = pq.ParquetFile(str(tmp_path / "top.parquet")).metadata.row_group(0)
    dictionary = {
        meta.column(i).path_in_schema: any("DICTIONARY" in e for e in meta.column(i).encodings)
        for i in range(meta.num_columns)
    }
    assert dictionary == {
        "user_id": False,
        "item_ids.list.element": False,
        "scores.list.element": False,
        "source": True,
    }
    assert pq.read_table(str(tmp_path / "top.parquet")).equals(top)


@pytest.mark.parametrize("layout", ["lists", "exploded"])
def test_fallback_lists_are_the_popular_items_marked_and_unscored(tmp_path, layout):
    users = IdMap(pa.array(["ann", "bob", "cy"]), offset=0)
    items = IdMap(pa.array([10, 20, 30], pa.int64()), offset=1)
    assert (
        export.write_fallback_part(str(tmp_path), np.array([2, 0]), np.array([3, 1]), users, items, layout)
        == 2
    )
    (part,) = (tmp_path / schema.TOPK).iterdir()
    rows = pq.read_table(part).to_pylist()
    if layout == "lists":
        assert rows == [
            {"user_id": "ann", "item_ids": [30, 10], "scores": [None, None], "source": "fallback"},
            {"user_id": "cy", "item_ids": [30, 10], "scores": [None, None], "source": "fallback"},
        ]
    else:
        assert [(r["user_id"], r["rank"], r["item_id"], r["score"], r["source"]) for r in rows] == [
            ("ann", 0, 30, None, "fallback"),
            ("ann", 1, 10, None, "fallback"),
            ("cy", 0, 30, None, "fallback"),
            ("cy", 1, 10, None, "fallback"),
        ]


def test_manifest_requires_every_key():
    with pytest.raises(ValueError, match="missing"):
        export.manifest(model="x")


# ---------------------------------------------------------------------------------------------
# The stage on a shared local Ray.


@pytest.fixture(scope="module")
def ray_session(moto_server):
    """One small local Ray for the module; started after moto so workers inherit its S3 settings.

    Workers import this module at start-up (PYTHONPATH + setup hook) so they know `tinyseq`.
    """
    import ray

    saved = os.environ.get("PYTHONPATH")
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, saved) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"worker_process_setup_hook": f"{__name__}.register_tiny"},
    )
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture
def ray_cluster(ray_session):
    """The module's Ray, checked after each test: every CPU it had free before is free again,
    so a test whose run failed or stalled cannot starve the next one."""
    import ray

    from batchrec import cluster

    before = ray.available_resources()
    yield
    assert cluster.wait_released(before, timeout_s=30), "a scoring run left resources reserved"


def read_run(run_url: str) -> dict:
    """A scoring run's tables (its date's partitions) and manifest."""
    return {
        "users": storage.read_parquet(workspace.table_url(run_url, schema.USER_EMBEDDINGS)),
        "items": storage.read_parquet(workspace.table_url(run_url, schema.ITEM_EMBEDDINGS)),
        "topk": storage.read_parquet(workspace.table_url(run_url, schema.TOPK)),
        "manifest": storage.read_json(storage.join(run_url, schema.MANIFEST)),
    }


def published_nothing(out: str) -> bool:
    """No table partition, no run record, no staging directory under the tables' root `out`."""
    return not glob.glob(f"{out}/*/dt=*") and not glob.glob(f"{out}/_runs/*")


def check_run(run_url: str, data_url: str, k: int, layout: str = "lists") -> dict:
    """The output contract, checked against a brute force from the exported embeddings."""
    assert storage.is_published(run_url)
    out = read_run(run_url)
    prepared = PreparedDataset.open(data_url)
    users, items, topk = out["users"], out["items"], out["topk"]
    user_ids = users.column("user_id").to_pylist()
    assert sorted(user_ids) == sorted(prepared.user_map.external.to_pylist())  # each user exactly once
    assert users.schema.field("user_id").type == prepared.user_map.type
    assert items.num_rows == prepared.n_items
    if layout == "exploded":
        df = topk.to_pandas().sort_values(["user_id", "rank"])
        grouped = df.groupby("user_id", sort=False)
        topk = pa.table(
            {
                "user_id": list(grouped.groups),
                "item_ids": [g["item_id"].tolist() for _, g in grouped],
                "scores": [g["score"].tolist() for _, g in grouped],
            }
        )
    assert sorted(topk.column("user_id").to_pylist()) == sorted(user_ids)

    item_row = {iid: r for r, iid in enumerate(items.column("item_id").to_pylist())}
    item_vecs = np.vstack(
        [np.zeros((1, out["manifest"]["d"])), np.stack(items.column("embedding").to_numpy(False))]
    )
    user_vec = dict(zip(user_ids, np.stack(users.column("embedding").to_numpy(False)), strict=True))
    histories_by_user = dict(
        zip(
            prepared.user_map.to_external(prepared.sequences.column("user_idx").to_numpy()).to_pylist(),
            prepared.sequences.column("items").to_pylist(),
            strict=True,
        )
    )
    rows = topk.to_pylist()
    vecs = np.stack([user_vec[r["user_id"]] for r in rows])
    # Internal id of exported item row r is r + 1 (item_map order); histories hold internal ids.
    assert [item_row[i] + 1 for i in prepared.item_map.external.to_pylist()] == list(
        range(1, prepared.n_items + 1)
    )
    histories = [histories_by_user[r["user_id"]] for r in rows]
    _, want = brute_force(vecs, item_vecs, histories, k)
    assert_same_topk(
        [[item_row[i] + 1 for i in r["item_ids"]] for r in rows],
        [r["scores"] for r in rows],
        want,
        histories,
        lambda row, ids: item_vecs[ids] @ vecs[row],
    )
    manifest = out["manifest"]
    assert list(manifest)[: len(schema.MANIFEST_KEYS)] == list(schema.MANIFEST_KEYS)
    assert manifest["k"] == k and manifest["rows"]["user_embeddings"] == len(user_ids)
    assert manifest["data_fingerprint"] == prepared.fingerprint
    return out


def invoke(*args: str):
    from cli import app

    return CliRunner().invoke(app, ["score", *args])


@pytest.mark.ray
def test_cli_scores_every_user_once_and_matches_bruteforce(ray_cluster, tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=60, n_items=50, string_ids=False)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data, max_len=3)
    out = str(tmp_path / "run")
    res = invoke("--model", "tinyseq", "--checkpoint", ckpt, "--data", data, "--out", out, "--k", "7")
    assert res.exit_code == 0, res.output
    run_url = res.stdout.strip().splitlines()[-1]
    assert run_url.startswith(f"{out}/_runs/dt=")
    got = check_run(run_url, data, k=7)
    assert got["users"].schema.field("user_id").type == pa.int64()
    # Batches become parts; a small batch size gives several, each user still exactly once.
    res = invoke(
        "--model", "tinyseq", "--checkpoint", ckpt, "--data", data, "--out", out, "--k", "7",
        "--batch-size", "16", "--topk-layout", "exploded",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(storage.ls(workspace.table_url(run_url, schema.TOPK))) >= 4
    check_run(run_url, data, k=7, layout="exploded")
    assert storage.ls(f"{out}/_runs") == [storage.basename(run_url)]  # no staging left


@pytest.mark.ray
@pytest.mark.s3
def test_scores_to_s3_through_moto(ray_cluster, s3_bucket):
    data = make_tiny_prepared(f"{s3_bucket}/prepared/tiny", n_users=30, n_items=25)
    ckpt = save_tiny(f"{s3_bucket}/checkpoints/tinyseq/1", data)
    out = run(ScoreConfig(model="tinyseq", checkpoint=ckpt, data=data, out=f"{s3_bucket}/run", k=5))
    check_run(out, data, k=5)


@pytest.mark.ray
def test_workspace_defaults_and_atomic_rerun(ray_cluster, tmp_path, monkeypatch):
    ws = str(tmp_path / "ws")
    data = make_tiny_prepared(f"{ws}/prepared/tiny", n_users=20, n_items=30)
    save_tiny(f"{ws}/checkpoints/tinyseq/20261122T000000", data)
    monkeypatch.setenv("BATCHREC_WORKSPACE", ws)
    res = invoke("--model", "tinyseq", "--k", "5", "--date", "2026-11-23")
    assert res.exit_code == 0, res.output
    run_url = f"{ws}/outputs/tinyseq/_runs/dt=2026-11-23"
    assert res.stdout.strip().splitlines()[-1] == run_url
    first = check_run(run_url, data, k=5)
    assert first["manifest"]["date"] == "2026-11-23"
    # A rerun of the same date with another k replaces the output whole.
    res = invoke("--model", "tinyseq", "--k", "3", "--date", "2026-11-23")
    assert res.exit_code == 0, res.output
    second = check_run(run_url, data, k=3)
    assert second["manifest"]["run_id"] and second["manifest"]["k"] == 3
    assert storage.ls(f"{ws}/outputs/tinyseq") == ["_runs", "item_embeddings", "topk", "user_embeddings"]
    for table in ("_runs", *schema.TABLES):
        assert storage.ls(f"{ws}/outputs/tinyseq/{table}") == ["dt=2026-11-23"]


@pytest.mark.ray
def test_tables_read_as_date_partitioned_tables_by_pyarrow_and_duckdb(ray_cluster, tmp_path):
    import duckdb
    import pyarrow.dataset as pads

    data = make_tiny_prepared(str(tmp_path / "data"), n_users=20, n_items=30)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    out = str(tmp_path / "outputs")
    for date, k in (("2026-11-22", 4), ("2026-11-23", 5)):
        run(ScoreConfig(model="tinyseq", checkpoint=ckpt, data=data, out=out, date=date, k=k))
    # pyarrow's Hive partition discovery: one table per directory, with its `dt` column
    topk = pads.dataset(f"{out}/topk", format="parquet", partitioning="hive").to_table()
    assert topk.column_names == ["user_id", "item_ids", "scores", "source", "dt"]
    counts = topk.group_by("dt").aggregate([("user_id", "count")]).sort_by("dt").to_pylist()
    assert counts == [{"dt": "2026-11-22", "user_id_count": 20}, {"dt": "2026-11-23", "user_id_count": 20}]
    users = pads.dataset(f"{out}/user_embeddings", format="parquet", partitioning="hive").to_table()
    assert users.column_names == ["user_id", "embedding", "dt"] and users.num_rows == 40
    # DuckDB, as a warehouse reads it: a glob over the table with hive_partitioning
    got = duckdb.sql(
        f"SELECT dt, count(*) AS users, max(len(item_ids)) AS k FROM read_parquet('{out}/topk/*/*.parquet', "
        "hive_partitioning = true) GROUP BY dt ORDER BY dt"
    ).fetchall()
    assert [(str(d), n, k) for d, n, k in got] == [("2026-11-22", 20, 4), ("2026-11-23", 20, 5)]
    latest = workspace.newest(f"{out}/_runs", prefix="dt=")
    assert storage.read_json(f"{latest}/manifest.json")["tables"]["topk"] == f"{out}/topk/dt=2026-11-23"


@pytest.mark.ray
@pytest.mark.slow
def test_killed_worker_is_retried_and_output_is_complete(ray_cluster, tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=80, n_items=30)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    marker = tmp_path / "killed"
    cfg = ScoreConfig(
        model="tinyseq",
        checkpoint=ckpt,
        data=data,
        out=str(tmp_path / "run"),
        k=5,
        batch_size=16,
        fault=f"kill-once:{marker}",
    )
    out = run(cfg)
    assert marker.exists(), "the fault was not injected"
    got = check_run(out, data, k=5)
    # Parts are named by their batch's first user, so the retried batch replaced its files.
    users = workspace.table_url(out, schema.USER_EMBEDDINGS)
    parts = [p for p in storage.ls(users) if p.endswith(".parquet")]
    assert sum(pq.read_metadata(os.path.join(users, p)).num_rows for p in parts) == 80
    assert got["manifest"]["rows"]["topk"] == 80


@pytest.mark.ray
def test_a_run_that_cannot_finish_publishes_nothing(ray_cluster, tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"))
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    out = str(tmp_path / "run")
    cfg = ScoreConfig(model="tinyseq", checkpoint=ckpt, data=data, out=out, k=5)
    run_url = run(cfg)
    before = read_run(run_url)["manifest"]["run_id"]
    cfg.fault, cfg.k = "raise", 3
    with pytest.raises(Exception, match="injected scoring fault"):
        run(cfg)
    assert storage.is_published(run_url) and read_run(run_url)["manifest"]["k"] == 5  # the old run is intact
    assert read_run(run_url)["manifest"]["run_id"] == before
    assert storage.ls(f"{out}/_runs") == [storage.basename(run_url)]  # no staging left
    cfg.out = str(tmp_path / "fresh")
    with pytest.raises(Exception, match="injected scoring fault"):
        run(cfg)
    assert published_nothing(cfg.out)
    # The sequence that once hung the suite: a failed run's actor kept its CPU and the next
    # run's pool took the last one from the read tasks. The next good run must just work.
    cfg.fault, cfg.out = None, out
    run(cfg)
    assert read_run(run_url)["manifest"]["k"] == 3


@pytest.mark.ray
def test_a_blocked_worker_is_stopped_by_the_watchdog(ray_cluster, tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"))
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    out = str(tmp_path / "run")
    cfg = ScoreConfig(
        model="tinyseq", checkpoint=ckpt, data=data, out=out, k=5, fault="hang", stall_timeout_s=3
    )
    with pytest.raises(RetryableError, match=r"scoring stalled: no batch completed in \d+ s"):
        run(cfg)
    assert published_nothing(out)
    # (the fixture checks the blocked actor was killed and its CPU is free again)


def test_a_retryable_failure_exits_75_with_one_error_line(monkeypatch):
    import batchrec.score

    def stalled(cfg):
        raise RetryableError("scoring stalled: no batch completed in 3 s")

    monkeypatch.setattr(batchrec.score, "run", stalled)
    res = invoke("--model", "tinyseq")
    assert res.exit_code == 75
    assert res.output.strip() == "error: scoring stalled: no batch completed in 3 s"


def test_the_pool_is_sized_from_free_resources_and_leaves_a_cpu_to_the_reads():
    cpu = ScoreConfig()
    assert pool_size(cpu, {"CPU": 8.0}, {"CPU": 8.0}) == Pool(1, 7, 0.0)
    assert pool_size(cpu, {"CPU": 2.0}, {"CPU": 8.0}) == Pool(1, 1, 0.0)  # six held elsewhere
    assert pool_size(cpu, {}, {"CPU": 2.0}) == Pool(1, 1, 0.0)
    assert pool_size(ScoreConfig(cpus_per_worker=2), {"CPU": 8.0}, {"CPU": 8.0}) == Pool(1, 3, 0.0)
    assert pool_size(cpu, {"CPU": 8.0, "GPU": 3.0}, {"CPU": 8.0, "GPU": 4.0}) == Pool(1, 3, 1.0)
    assert pool_size(ScoreConfig(gpus_per_worker=0.5), {"GPU": 1.0}, {"GPU": 1.0}) == Pool(1, 2, 0.5)
    assert pool_size(ScoreConfig(num_workers=4), {"CPU": 1.0}, {"CPU": 2.0}) == Pool(4, 4, 0.0)


def test_vocabulary_translates_by_external_id_and_drops_unknown_items(tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_items=15)  # items i0..i14 = 1..15
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    meta = checkpoint.read_meta(ckpt)
    other = IdMap(pa.array(["i3", "new", "i0", "i4"]), offset=1)  # data ids 1..4
    vocab = checkpoint.vocabulary(ckpt, meta, other, other.fingerprint())
    assert vocab.to_model.tolist() == [0, 4, 0, 1, 5]
    assert (vocab.known, vocab.data_items, vocab.identity) == (3, 4, False)
    assert vocab.translate(np.array([2, 1, 2, 3, 4])).tolist() == [4, 1, 5]
    assert vocab.items.external.to_pylist() == [f"i{j}" for j in range(15)]
    with pytest.raises(UserError, match="item ids are int64, the checkpoint's are string"):
        ints = IdMap(pa.array([1, 2], pa.int64()), offset=1)
        checkpoint.vocabulary(ckpt, meta, ints, ints.fingerprint())


def test_exclude_seen_none_lets_history_items_back_into_the_list(tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=3, n_items=15)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    histories = [np.arange(1, 14), np.array([3])]
    batch = {"user_idx": np.array([0, 1]), "items": histories}
    scorer = Scorer(ckpt, k=6, exclude_seen="none")
    out = scorer(batch)
    items = scorer.item_vectors()
    _, want = brute_force(out["embedding"], items, [[], []], 6)  # nothing but padding masked
    np.testing.assert_allclose(out["topk_scores"], want, atol=1e-5)
    assert set(out["topk_items"][0].tolist()) & set(histories[0].tolist())


def subset_prepared(src: str, dst: str, users: list[int]) -> str:
    """`src` cut to some users, items renumbered by first appearance: what a model trained on a
    sample of users has as its vocabulary."""
    from batchrec.dataset import write_prepared

    prepared = PreparedDataset.open(src)
    rows = prepared.sequences.to_pylist()
    kept = [r for r in rows if r["user_idx"] in set(users)]
    new_of_old: dict[int, int] = {}
    for r in kept:
        for i in r["items"]:
            new_of_old.setdefault(i, len(new_of_old) + 1)
    old_ids = prepared.item_map.external.to_pylist()
    seqs = [{**r, "user_idx": u, "items": [new_of_old[i] for i in r["items"]]} for u, r in enumerate(kept)]
    return write_prepared(
        dst,
        item_ids=pa.array([old_ids[i - 1] for i in new_of_old]),
        user_ids=prepared.user_map.to_external(np.array([r["user_idx"] for r in kept])),
        sequences=pa.Table.from_pylist(seqs),
        targets=pa.Table.from_pylist([], schema=schema.TARGETS_SCHEMA),
        source="subset",
        params={"split": "full"},
        stats={"users": len(seqs), "items": len(new_of_old)},
    )


@pytest.mark.ray
def test_a_model_trained_on_30_percent_of_users_scores_every_user(ray_cluster, tmp_path):
    from batchrec.dataset import write_prepared

    full = make_tiny_prepared(str(tmp_path / "full"), n_users=40, n_items=60)
    sample = subset_prepared(full, str(tmp_path / "sample"), users=list(range(12)))
    ckpt = save_tiny(str(tmp_path / "ckpt"), sample, max_len=4)
    known = set(checkpoint.load_item_ids(ckpt).to_pylist())
    assert len(known) < 60, "the sample should miss some items"
    # Plus two users the model never saw: one with a known item, one with only unknown items.
    prepared = PreparedDataset.open(full)
    seqs = prepared.sequences.to_pylist()
    ids = prepared.item_map.external.to_pylist()
    unknown = [i + 1 for i, x in enumerate(ids) if x not in known]
    first_known = next(i + 1 for i, x in enumerate(ids) if x in known)
    seqs += [
        {"user_idx": 40, "items": [unknown[0], first_known], "timestamps": [0, 1], "train_len": 2},
        {"user_idx": 41, "items": unknown[:3], "timestamps": [0, 1, 2], "train_len": 3},
    ]
    data = write_prepared(
        str(tmp_path / "today"),
        item_ids=prepared.item_map.external,
        user_ids=pa.array([f"u{u}" for u in range(42)]),
        sequences=pa.Table.from_pylist(seqs),
        targets=pa.Table.from_pylist([], schema=schema.TARGETS_SCHEMA),
        source="today",
        params={"split": "full"},
        stats={"users": 42, "items": 60},
    )
    out = run(ScoreConfig(model="tinyseq", checkpoint=ckpt, data=data, out=str(tmp_path / "run"), k=6))
    got = read_run(out)
    manifest = got["manifest"]
    dropped_users = [r["user_idx"] for r in seqs if not set(ids[i - 1] for i in r["items"]) & known]
    assert dropped_users and 41 in dropped_users
    assert manifest["vocabulary"]["users_without_known_items"] == len(dropped_users)
    assert manifest["vocabulary"]["history_events_dropped"] == sum(
        sum(ids[i - 1] not in known for i in r["items"]) for r in seqs
    )
    user_ids = got["users"].column("user_id").to_pylist()
    assert sorted(user_ids) == sorted(f"u{r['user_idx']}" for r in seqs if r["user_idx"] not in dropped_users)
    # Brute force from the exported tables: histories translated by external id.
    items = got["items"]
    assert set(items.column("item_id").to_pylist()) == known
    row_of = {x: r + 1 for r, x in enumerate(items.column("item_id").to_pylist())}
    item_vecs = np.vstack([np.zeros((1, manifest["d"])), np.stack(items.column("embedding").to_numpy(False))])
    user_vec = dict(zip(user_ids, np.stack(got["users"].column("embedding").to_numpy(False)), strict=True))
    history = {
        f"u{r['user_idx']}": [row_of[ids[i - 1]] for i in r["items"] if ids[i - 1] in row_of] for r in seqs
    }
    every = got["topk"].to_pylist()
    # every user has a list: the model's, or the fallback for those with no item the model knows
    fallback = [r for r in every if r["source"] == "fallback"]
    assert sorted(r["user_id"] for r in fallback) == sorted(f"u{u}" for u in dropped_users)
    # the fallback: the most popular known items of the scored histories, k of them, no score
    counts: dict[int, int] = {}
    for h in history.values():
        for i in h:
            counts[i] = counts.get(i, 0) + 1
    popular = sorted(counts, key=lambda i: (-counts[i], i))[:6]
    assert all([row_of[i] for i in r["item_ids"]] == popular and r["scores"] == [None] * 6 for r in fallback)
    rows = [r for r in every if r["source"] == "model"]
    assert sorted(r["user_id"] for r in rows) == sorted(user_ids)
    vecs = np.stack([user_vec[r["user_id"]] for r in rows])
    histories = [history[r["user_id"]] for r in rows]
    _, want = brute_force(vecs, item_vecs, histories, 6)
    assert_same_topk(
        [[row_of[i] for i in r["item_ids"]] for r in rows],
        [r["scores"] for r in rows],
        want,
        histories,
        lambda row, ids_: item_vecs[ids_] @ vecs[row],
    )
    # The user vector is the model's on the translated history (the last max_len known items).
    model, _ = checkpoint.load(ckpt)
    padded, lengths = left_pad([np.array(history["u40"])], 4)
    with torch.no_grad():
        want_vec = model.encode(torch.from_numpy(padded), torch.from_numpy(lengths)).numpy()[0]
    np.testing.assert_allclose(user_vec["u40"], want_vec, rtol=1e-5, atol=1e-5)


def repeats_dataset(url: str) -> str:
    """Literal histories where users come back to items (so targets repeat history items), with
    LOO-style targets (one valid, one test per user) and time-style ones (several per user)."""
    from batchrec.dataset import write_prepared

    histories = [
        [1, 2, 3, 2, 4, 2],
        [5, 6, 5, 7, 5, 8, 5],
        [9, 10, 11, 12, 13, 9],
        [3, 14, 15, 3, 16, 17, 14, 18],
        [19, 20, 21, 22, 20],
        [23, 24, 25, 26, 27, 28],
    ]
    seqs, targets = [], []
    for u, h in enumerate(histories):
        n = len(h)
        seqs.append({"user_idx": u, "items": h, "timestamps": list(range(n)), "train_len": n - 3})
        targets += [{"user_idx": u, "split": "valid", "position": n - 3, "item_idx": h[n - 3]}]
        targets += [{"user_idx": u, "split": "test", "position": p, "item_idx": h[p]} for p in (n - 2, n - 1)]
    return write_prepared(
        url,
        item_ids=pa.array([f"i{i}" for i in range(28)]),
        user_ids=pa.array([f"u{u}" for u in range(len(histories))]),
        sequences=pa.Table.from_pylist(seqs),
        targets=pa.Table.from_pylist(targets),
        source="repeats",
        params={"split": "time"},
        stats={"users": len(histories), "items": 28, "interactions": sum(map(len, histories))},
    )


@pytest.mark.parametrize("policy", ["history", "none"])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_evaluate_reports_what_the_published_lists_reach(tmp_path, policy, split):
    """The cross-check: metrics recomputed from the scorer's top-k lists (the histories being the
    evaluation inputs) equal `evaluate`'s, with repeated targets present."""
    from batchrec import evaluate

    data = repeats_dataset(str(tmp_path / "data"))
    ckpt = save_tiny(str(tmp_path / "ckpt"), data, max_len=3)
    prepared = PreparedDataset.open(data)
    _, offsets, items, _ = prepared.flat_sequences()
    rows, positions, targets = prepared.split_targets(split)
    histories = [items[offsets[r] : offsets[r] + p] for r, p in zip(rows, positions, strict=True)]
    repeats = sum(t in h for t, h in zip(targets, histories, strict=True))
    assert repeats >= 2, "the data must have targets that repeat a history item"
    k = 10
    lists = Scorer(ckpt, k=k, exclude_seen=policy)(
        {"user_idx": np.arange(len(histories)), "items": histories}
    )
    ranks = np.array(
        [
            list(row).index(t) + 1 if t in row else np.inf
            for row, t in zip(lists["topk_items"].tolist(), targets, strict=True)
        ]
    )
    report = evaluate.run(
        evaluate.EvaluateConfig(checkpoint=ckpt, data=data, split=split, ks=[5, k], exclude_seen=policy)
    )
    assert report["exclude_seen"] == policy
    for cut in (5, k):
        hit = ranks <= cut
        assert report["metrics"][f"HR@{cut}"] == pytest.approx(hit.mean(), abs=1e-6)
        ndcg = np.where(hit, 1 / np.log2(np.where(hit, ranks, 1) + 1), 0).mean()
        assert report["metrics"][f"NDCG@{cut}"] == pytest.approx(ndcg, abs=1e-6)
    if policy == "history":  # a repeated target can never be in a published list
        assert not any(t in h and r < np.inf for t, h, r in zip(targets, histories, ranks, strict=True))


def test_evaluate_accepts_data_beyond_the_checkpoint_vocabulary(tmp_path):
    """Trained on some users' items, evaluated on everyone: known items only, an unknown target
    or a user left with no known item is a miss — exactly what the published lists would show."""
    from batchrec import evaluate

    data = repeats_dataset(str(tmp_path / "data"))
    sample = subset_prepared(data, str(tmp_path / "sample"), users=[0, 1, 3])
    ckpt = save_tiny(str(tmp_path / "ckpt"), sample, max_len=3)
    prepared = PreparedDataset.open(data)
    vocab = checkpoint.vocabulary(
        ckpt, checkpoint.read_meta(ckpt), prepared.item_map, prepared.metadata["item_map_fingerprint"]
    )
    assert 0 < vocab.known < prepared.n_items
    _, offsets, items, _ = prepared.flat_sequences()
    rows, positions, targets = prepared.split_targets("test")
    histories = [
        vocab.translate(items[offsets[r] : offsets[r] + p]) for r, p in zip(rows, positions, strict=True)
    ]
    model_targets = vocab.to_model[targets]
    assert (model_targets == 0).any() and any(len(h) == 0 for h in histories)
    scorable = [i for i, h in enumerate(histories) if len(h)]
    lists = Scorer(ckpt, k=5)(
        {"user_idx": np.arange(len(scorable)), "items": [histories[i] for i in scorable]}
    )
    ranks = np.full(len(histories), np.inf)
    for i, row in zip(scorable, lists["topk_items"].tolist(), strict=True):
        if model_targets[i] in row:
            ranks[i] = row.index(model_targets[i]) + 1
    report = evaluate.run(evaluate.EvaluateConfig(checkpoint=ckpt, data=data, split="test", ks=[5]))
    assert report["metrics"]["HR@5"] == pytest.approx((ranks <= 5).mean(), abs=1e-6)
    ndcg = np.where(ranks <= 5, 1 / np.log2(np.where(ranks <= 5, ranks, 1) + 1), 0).mean()
    assert report["metrics"]["NDCG@5"] == pytest.approx(ndcg, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error, exit 2, nothing published (all fail before Ray starts).


def test_missing_checkpoint_and_data_say_where_they_looked(tmp_path):
    ws = str(tmp_path / "ws")
    res = invoke("--model", "tinyseq", "--workspace", ws)
    assert res.exit_code == 2
    assert "no checkpoint for model 'tinyseq'" in res.output and f"{ws}/checkpoints/tinyseq" in res.output
    data = make_tiny_prepared(str(tmp_path / "data"))
    save_tiny(f"{ws}/checkpoints/tinyseq/1", data)
    res = invoke("--model", "tinyseq", "--workspace", ws)
    assert res.exit_code == 2 and "no prepared dataset" in res.output and f"{ws}/prepared" in res.output
    res = invoke("--model", "tinyseq", "--workspace", ws, "--data", str(tmp_path / "nope"))
    assert res.exit_code == 2 and "no prepared dataset here" in res.output


def test_bad_inputs_exit_2_and_publish_nothing(tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_items=30)
    other = make_tiny_prepared(str(tmp_path / "other"), n_items=31, seed=1, string_ids=False)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    out = str(tmp_path / "run")
    base = ["--model", "tinyseq", "--checkpoint", ckpt, "--out", out]
    cases = {
        "the data's item ids are int64, the checkpoint's are string": [*base, "--data", other],
        "larger than the catalogue (30 items)": [*base, "--data", data, "--k", "31"],
        "is a 'tinyseq' model, not 'pop'": ["--model", "pop", "--checkpoint", ckpt, "--data", data],
        "date: '23/11/2026' is not a date YYYY-MM-DD": [*base, "--data", data, "--date", "23/11/2026"],
    }
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases["cannot write to the output location"] = [
        "--model", "tinyseq", "--checkpoint", ckpt, "--data", data, "--k", "5", "--out", str(blocker / "run"),
    ]  # fmt: skip
    for message, args in cases.items():
        res = invoke(*args)
        assert res.exit_code == 2, (message, res.output)
        assert message in res.output and res.output.count("error:") == 1
    assert not storage.exists(out)


def test_faiss_retrieval_drops_seen_items_and_reports_recall(tmp_path):
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=25, n_items=40)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    seqs = PreparedDataset.open(data).sequences
    batch = {"user_idx": seqs.column("user_idx").to_numpy(), "items": seqs.column("items").to_pylist()}
    exact = Scorer(ckpt, k=8)(batch)
    approx = Scorer(ckpt, k=8, retrieval="faiss")(batch)
    for row, h in enumerate(batch["items"]):
        assert not set(approx["topk_items"][row].tolist()) & set(h)
    # Scores are exact inner products whatever the index; a small catalogue gets an exact index.
    np.testing.assert_allclose(approx["topk_scores"], exact["topk_scores"], atol=1e-5)
    from batchrec.score import _Inputs, measure_recall

    prepared = PreparedDataset.open(data)
    vocab = checkpoint.vocabulary(
        ckpt, checkpoint.read_meta(ckpt), prepared.item_map, prepared.metadata["item_map_fingerprint"]
    )
    assert vocab.identity
    inputs = _Inputs(
        ckpt, data, str(tmp_path / "out"), "2026-11-23", str(tmp_path / "out" / "_runs" / "dt=2026-11-23")
    )
    recall = measure_recall(inputs, k=8, sample=10, vocab=vocab, policy="history")
    assert recall == {"recall": 1.0, "k": 8, "users": 10, "searched_with": "faiss Flat"}


def test_cpu_topk_is_exact_with_ties_long_histories_and_few_unseen_items(tmp_path):
    """The FAISS brute-force path against brute force: items tied in score (duplicated vectors),
    a history longer than k covering the best items, and a user with fewer than k unseen items."""
    data = make_tiny_prepared(str(tmp_path / "data"), n_users=3, n_items=40)
    ckpt = save_tiny(str(tmp_path / "ckpt"), data)
    scorer = Scorer(ckpt, k=6, user_chunk=2)
    items = scorer.item_vectors()
    scorer.search_index.reset()
    tied = items[1:].copy()
    tied[10:20] = tied[0]  # items 11..20 score exactly as item 1
    scorer.search_index.add(tied)
    users = torch.from_numpy(np.stack([tied[0], tied[5], -tied[0]]))
    best_first = np.argsort(-(tied @ tied[0]), kind="stable") + 1
    histories = [best_first[:12].astype(np.int64), np.array([6]), np.arange(1, 37)]
    got_items, got_scores = scorer.topk(users, histories)
    vecs = np.vstack([np.zeros((1, tied.shape[1]), np.float32), tied])
    _, want = brute_force(users.numpy(), vecs, histories, 6)
    assert_same_topk(
        got_items[:2], got_scores[:2], want, histories[:2], lambda row, ids: vecs[ids] @ users[row].numpy()
    )
    np.testing.assert_allclose(got_scores[2], want[2], atol=1e-4)  # 4 unseen items, then -inf
    assert sorted(got_items[2][:4].tolist()) == [37, 38, 39, 40] and got_items[2][4:].tolist() == [0, 0]
