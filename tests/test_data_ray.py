"""`data prepare --engine ray` gives what the local engine gives, on tiny literal logs and on
synthetic data with k-core filtering; bad input found inside a Ray worker is one error line.

The Ray runs share one local Ray started by a driver subprocess (its own session: a failure here
cannot leave Ray state behind for the next test); the local runs go through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from batchrec import schema, storage
from batchrec.data.ray_engine import partition_of
from batchrec.dataset import PreparedDataset, part_bounds
from cli import app

runner = CliRunner()
pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Several prepares with the Ray engine on one local Ray: argv[1] = JSON list of PrepareConfig kwargs.
# The time split's cut points are narrowed by histograms down to 50 candidates (not 1M), so the
# small data here goes through that path too.
_DRIVER = """
import json, sys, ray
from batchrec.data import ray_engine
from batchrec.data.prepare import PrepareConfig, run
ray_engine._SELECT_AT_MOST = 50
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
for kwargs in json.loads(sys.argv[1]):
    run(PrepareConfig(engine="ray", **kwargs))
"""


def _local_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def prepare_on_ray(configs: list[dict]) -> None:
    res = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(configs)],
        env=_local_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-4000:]


def prepare_locally(src: str, out: str, *args: str) -> None:
    res = runner.invoke(app, ["data", "prepare", src, "--out", out, "--engine", "local", *args])
    assert res.exit_code == 0, res.output


def canonical(url: str) -> dict:
    """Everything a dataset says, in external ids: per-user sequences, targets, items, stats."""
    ds = PreparedDataset.open(url)
    items = ds.item_map.external.to_pylist()
    seq = ds.sequences
    users = ds.user_map.to_external(seq.column("user_idx").to_numpy()).to_pylist()
    t = ds.targets
    return {
        "sequences": {
            u: ([items[i - 1] for i in its], ts, n)
            for u, its, ts, n in zip(
                users,
                seq.column("items").to_pylist(),
                seq.column("timestamps").to_pylist(),
                seq.column("train_len").to_pylist(),
                strict=True,
            )
        },
        "targets": sorted(
            zip(
                ds.user_map.to_external(t.column("user_idx").to_numpy()).to_pylist(),
                t.column("split").to_pylist(),
                t.column("position").to_pylist(),
                [items[i - 1] for i in t.column("item_idx").to_pylist()],
                strict=True,
            )
        ),
        "items": items,
        "stats": ds.metadata["stats"],
    }


def test_both_engines_agree_on_literal_logs_and_on_synthetic_k_core(tmp_path):
    # tiny literal log: string users, ties in time (input order decides), repeats, a user and
    # an item that k-core (2, 2) removes, in two Parquet files (the Ray engine reads them apart)
    rows = [
        ("ann", "x", 5), ("bob", "y", 1), ("ann", "y", 3), ("cat", "z", 9), ("bob", "x", 1),
        ("ann", "x", 3), ("dan", "w", 2), ("bob", "x", 4), ("cat", "x", 1), ("ann", "v", 7),
    ]  # fmt: skip
    raw = tmp_path / "raw"
    raw.mkdir()
    for n, chunk in enumerate((rows[:6], rows[6:])):
        columns = dict(zip(("user_id", "item_id", "timestamp"), zip(*chunk, strict=True), strict=True))
        pq.write_table(pa.table(columns), raw / f"part-{n}.parquet")
    synth = str(tmp_path / "synth")
    res = runner.invoke(
        app, ["data", "synth", "--out", synth, "--users", "3000", "--items", "400", "--avg-len", "12"]
    )
    assert res.exit_code == 0, res.output
    cases = {
        "tiny": (str(raw), ["--min-user-count", "2", "--min-item-count", "2", "--split", "loo"]),
        "tiny-first": (
            str(raw),
            ["--min-user-count", "0", "--min-item-count", "0", "--repeats", "first", "--split", "full"],
        ),  # fmt: skip
        # thresholds high enough that removing items drops users and back again, several rounds
        "kcore-loo": (synth, ["--min-user-count", "12", "--min-item-count", "90", "--split", "loo"]),
        "kcore-time": (synth, ["--min-user-count", "10", "--min-item-count", "60", "--split", "time"]),
    }
    ray_configs = []
    for name, (src, args) in cases.items():
        prepare_locally(src, str(tmp_path / f"{name}-local"), *args)
        opts = {args[i].lstrip("-").replace("-", "_"): args[i + 1] for i in range(0, len(args), 2)}
        for key in ("min_user_count", "min_item_count"):
            opts[key] = int(opts.get(key, 5))
        ray_configs.append({"input": src, "out": str(tmp_path / f"{name}-ray"), "partitions": 3, **opts})
    prepare_on_ray(ray_configs)

    tiny = canonical(str(tmp_path / "tiny-ray"))
    # by hand: ann x(5) y(3) x(3) v(7) → y x x v (ties: input order); bob y(1) x(1) x(4); cat x z;
    # dan w (one event: out); then z and v have one event each (out), so cat has one (out)
    assert tiny["sequences"] == {
        "ann": (["y", "x", "x"], [3, 3, 5], 1),
        "bob": (["y", "x", "x"], [1, 1, 4], 1),
    }
    assert tiny["items"] == ["x", "y"]  # first appearance (input row) among the kept events
    assert tiny["targets"] == [("ann", "test", 2, "x"), ("ann", "valid", 1, "x"),
                               ("bob", "test", 2, "x"), ("bob", "valid", 1, "x")]  # fmt: skip
    for name in cases:
        local, ray = canonical(str(tmp_path / f"{name}-local")), canonical(str(tmp_path / f"{name}-ray"))
        assert ray == local, name
        assert len(PreparedDataset.open(str(tmp_path / f"{name}-ray")).part_urls("sequences")) == 3
    assert canonical(str(tmp_path / "tiny-first-ray"))["sequences"]["ann"][0] == ["y", "x", "v"]
    kcore = canonical(str(tmp_path / "kcore-loo-ray"))["stats"]
    assert 0 < kcore["users"] < 3000 and 0 < kcore["items"] < 400  # the filter did remove some

    # users are numbered partition by partition, each part a consecutive range
    ds = PreparedDataset.open(str(tmp_path / "kcore-loo-ray"))
    start = 0
    for url in ds.part_urls("sequences"):
        ids = pq.read_table(storage.url_to_fs(url)[1]).column("user_idx").to_pylist()
        assert ids == list(range(start, start + len(ids)))
        start += len(ids)
    assert start == ds.n_users


def test_bad_input_found_in_a_ray_worker_is_one_error_line_and_publishes_nothing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [5, 6], "timestamp": [1, 2]}), raw / "a.parquet")
    pq.write_table(
        pa.table({"user_id": [3, None], "item_id": [5, 6], "timestamp": [3, 4]}), raw / "b.parquet"
    )
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "batchrec", "data", "prepare", str(raw), "--out", str(out), "--engine", "ray"],
        env=_local_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "null id(s) in column 'user_id'" in errors[0] and "b.parquet" in errors[0]
    assert "Traceback" not in res.stderr
    assert not out.exists() and os.listdir(tmp_path) == ["raw"]  # no staging folder left either


def test_partitions_are_a_stable_hash_of_the_id_value():
    # pinned: changing these changes every Ray-prepared dataset's user numbering
    assert partition_of(pl.Series([1, 2, 3, 10**12]), 7).tolist() == [2, 4, 2, 6]
    assert partition_of(pl.Series([1, 2, 3], dtype=pl.Int32), 7).tolist() == [2, 4, 2]
    assert partition_of(pl.Series(["ann", "bob", "", "ann", "a" * 300]), 5).tolist() == [3, 3, 0, 3, 2]
    assert partition_of(pl.Series([], dtype=pl.String), 5).tolist() == []


def test_local_parts_are_bounded_and_read_back_as_one(tmp_path, monkeypatch):
    assert part_bounds([3, 1, 4, 1, 5], max_events=5) == [(0, 2), (2, 4), (4, 5)]
    assert part_bounds([9, 1], max_events=5) == [(0, 1), (1, 2)]  # a long user gets its own part
    src = tmp_path / "log.csv"
    src.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{u},{i},{i}\n" for u in range(5) for i in range(4))
    )
    prepare_locally(str(src), str(tmp_path / "one"), "--min-user-count", "0", "--min-item-count", "0")
    monkeypatch.setattr("batchrec.dataset.schema.PART_EVENTS", 8)
    prepare_locally(str(src), str(tmp_path / "many"), "--min-user-count", "0", "--min-item-count", "0")
    one, many = PreparedDataset.open(str(tmp_path / "one")), PreparedDataset.open(str(tmp_path / "many"))
    assert len(many.part_urls("sequences")) == 3 and len(one.part_urls("sequences")) == 1
    assert canonical(str(tmp_path / "many")) == canonical(str(tmp_path / "one"))
    assert many.sequences.equals(one.sequences) and many.targets.equals(one.targets)
    assert many.metadata["parts"]["targets"] == [f"targets/part-0000{i}.parquet" for i in range(3)]


def test_a_dataset_written_before_sharding_still_opens(tmp_path):
    """Format version 1: one file per table, no `parts` in metadata.json."""
    url = tmp_path / "v1"
    url.mkdir()
    pq.write_table(
        pa.table({"item_idx": pa.array([1, 2], pa.int32()), "item_id": [7, 9]}), url / "item_map.parquet"
    )
    pq.write_table(
        pa.table({"user_idx": pa.array([0], pa.int32()), "user_id": ["u"]}), url / "user_map.parquet"
    )
    seqs = pa.table({"user_idx": [0], "items": [[1, 2, 1]], "timestamps": [[1, 2, 3]], "train_len": [1]})
    pq.write_table(seqs.cast(schema.SEQUENCES_SCHEMA), url / "sequences.parquet")
    targets = pa.table(
        {"user_idx": [0, 0], "split": ["valid", "test"], "position": [1, 2], "item_idx": [2, 1]}
    )
    pq.write_table(targets.cast(schema.TARGETS_SCHEMA), url / "targets.parquet")
    stats = {"users": 1, "items": 2, "interactions": 3}
    (url / "metadata.json").write_text(json.dumps({"format_version": 1, "fingerprint": "f", "stats": stats,
                                                   "item_map_fingerprint": "g"}))  # fmt: skip
    (url / "_SUCCESS").write_text("")
    ds = PreparedDataset.open(str(url))
    assert ds.part_urls("sequences") == [str(url / "sequences.parquet")]
    assert ds.sequences.column("items").to_pylist() == [[1, 2, 1]]
    assert ds.user_map.external.to_pylist() == ["u"]
    assert ds.split_targets("test")[2].tolist() == [1]
    res = runner.invoke(app, ["data", "stats", str(url), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["users"] == 1


@pytest.mark.s3
def test_ray_engine_reads_and_writes_object_storage(s3_bucket, tmp_path):
    """Input, scratch and output on S3 (moto): what a multi-node cluster needs."""
    raw, local, ray = (f"{s3_bucket}/{name}" for name in ("raw", "local", "ray"))
    res = runner.invoke(
        app, ["data", "synth", "--out", raw, "--users", "600", "--items", "80", "--avg-len", "10"]
    )
    assert res.exit_code == 0, res.output
    prepare_locally(raw, local, "--split", "time")
    res = subprocess.run(
        [sys.executable, "-m", "batchrec", "data", "prepare", raw, "--out", ray, "--engine", "ray",
         "--partitions", "2", "--split", "time"],
        env=_local_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert canonical(ray) == canonical(local)
    assert not [p for p in storage.ls(s3_bucket) if p.startswith("_")]  # no staging or scratch left
