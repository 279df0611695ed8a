"""`batchrec score` and `batchrec run` on a real two-node Ray cluster (`ray start` head + worker
on loopback).

The driver is a separate process that joins through RAY_ADDRESS with token auth, as a KubeRay
RayJob's driver does. Shown here: scorer actors on both nodes, every user exactly once, the
same tables as a single-node run; losing the worker node in the middle of a run; a whole job
whose training runs on Ray Train workers of the cluster.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_tiny_prepared, make_untrained_sasrec
from localcluster import LocalCluster
from test_train_ray import NOISE, check_ray_trained_job

from batchrec import schema, storage, workspace
from batchrec.dataset import PreparedDataset

DATE = "2026-11-23"

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_nodes():
    cluster = LocalCluster(cpus_per_node=2).start(n_workers=1)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    data = make_tiny_prepared(str(root / "data"), n_users=3000, n_items=200)
    return data, make_untrained_sasrec(str(root / "ckpt"), data, dim=16)


def score_cmd(data: str, ckpt: str, out: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "batchrec", "score", "--model", "sasrec", "--checkpoint", ckpt,
        "--data", data, "--out", out, "--date", DATE, "--k", "10", "--batch-size", "100", *extra,
    ]  # fmt: skip


def local_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def tables(run: str) -> dict:
    users = storage.read_parquet(workspace.table_url(run, schema.USER_EMBEDDINGS)).sort_by("user_id")
    topk = storage.read_parquet(workspace.table_url(run, schema.TOPK)).sort_by("user_id")
    return {"users": users, "topk": topk, "manifest": storage.read_json(storage.join(run, schema.MANIFEST))}


def assert_complete(out: str, data: str) -> dict:
    run = workspace.score_run(out, DATE)
    assert storage.is_published(run)
    got = tables(run)
    want_users = sorted(PreparedDataset.open(data).user_map.external.to_pylist())
    assert got["users"].column("user_id").to_pylist() == want_users  # every user exactly once
    assert got["topk"].column("user_id").to_pylist() == want_users
    return got


def test_two_nodes_score_like_one(two_nodes, inputs, tmp_path):
    data, ckpt = inputs
    t0 = time.monotonic()
    res = subprocess.run(
        score_cmd(data, ckpt, str(tmp_path / "two"), "--num-workers", "3"),
        # Three actors cannot fit on one 2-CPU node, so they sit on both; Ray Data starts the
        # work when all three are up (not with the first, which could then take every batch).
        env=two_nodes.env(RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="240"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    two = assert_complete(str(tmp_path / "two"), data)
    assert two["manifest"]["cluster"]["nodes"] == 2, (two["manifest"]["cluster"], res.stderr)
    assert "ray.init" not in res.stderr and "Connecting to existing Ray cluster" not in res.stderr
    two_s = time.monotonic() - t0

    t0 = time.monotonic()
    res = subprocess.run(
        score_cmd(data, ckpt, str(tmp_path / "one")),
        env=local_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    one = assert_complete(str(tmp_path / "one"), data)
    one_s = time.monotonic() - t0
    assert one["manifest"]["cluster"]["nodes"] == 1
    np.testing.assert_allclose(
        np.stack(two["users"].column("embedding").to_numpy(False)),
        np.stack(one["users"].column("embedding").to_numpy(False)),
        rtol=1e-5,
        atol=1e-6,
    )
    assert two["topk"].column("item_ids").to_pylist() == one["topk"].column("item_ids").to_pylist()
    users = len(two["users"])
    print(
        f"\n3000 users: two nodes {users / two['manifest']['timings_s']['score_users']:.0f} users/s "
        f"(process {two_s:.1f} s), one node {users / one['manifest']['timings_s']['score_users']:.0f} users/s "
        f"(process {one_s:.1f} s)"
    )


def test_losing_a_node_mid_run_completes_or_publishes_nothing(two_nodes, inputs, tmp_path):
    data, ckpt = inputs
    out = str(tmp_path / "run")
    driver = (
        "from batchrec.score import ScoreConfig, run; "
        f"run(ScoreConfig(model='sasrec', checkpoint={ckpt!r}, data={data!r}, out={out!r}, date={DATE!r}, k=10, "
        "batch_size=100, fault='slow:0.3', stall_timeout_s=60))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver],
        env=two_nodes.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(f"{out}/_runs/_staging-*/topk/part-*"):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no batch was scored in 180 s"
            time.sleep(0.2)
        two_nodes.kill_node(two_nodes.workers[-1])
        try:
            _, stderr = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(
                f"the run neither finished nor failed within 150 s of the node loss:\n{proc.communicate()[1][-4000:]}"
            )
    finally:
        proc.kill()
    if proc.returncode == 0:
        assert_complete(out, data)
        print("\nthe run survived the lost node")
    else:
        assert not glob.glob(f"{out}/*/dt=*"), "a failed run published something"
        assert not glob.glob(f"{out}/_runs/_staging-*"), "a failed run left its staging directory"
        print(f"\nthe run failed cleanly (exit {proc.returncode}): {stderr.strip().splitlines()[-1]}")
    # Once Ray has marked the node dead and a replacement has joined (as KubeRay replaces a lost
    # worker pod), a rerun of the same command completes.
    two_nodes.wait_alive(1)
    two_nodes.add_worker()
    res = subprocess.run(
        score_cmd(data, ckpt, out, "--stall-timeout-s", "60"),
        env=two_nodes.env(),
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert_complete(out, data)


@pytest.mark.timeout(600)  # two `batchrec` processes of at most 280 s each
def test_a_job_trains_on_ray_train_workers_of_the_cluster(two_nodes, tmp_path):
    two, one = check_ray_trained_job(tmp_path, two_nodes.env())
    print(f"\nvalid NDCG@10: 2 Ray Train workers on the two-node cluster {two:.4f}, one process {one:.4f}")
    assert abs(two - one) <= NOISE, (two, one)


def test_prepare_on_two_nodes_gives_the_dataset_of_one(two_nodes, tmp_path):
    raw = str(tmp_path / "raw")
    synth = [
        sys.executable,
        "-m",
        "batchrec",
        "data",
        "synth",
        "--out",
        raw,
        "--users",
        "4000",
        "--items",
        "300",
    ]
    subprocess.run(synth, env=local_env(), check=True, capture_output=True, timeout=120)
    fingerprints = {}
    for name, env in (("two", two_nodes.env()), ("one", local_env())):
        out = str(tmp_path / name)
        res = subprocess.run(
            [sys.executable, "-m", "batchrec", "data", "prepare", raw, "--out", out, "--engine", "ray",
             "--partitions", "6"],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        nodes = 2 if name == "two" else 1
        assert f"{nodes} node(s) did the work" in res.stderr, res.stderr[-3000:]
        fingerprints[name] = PreparedDataset.open(out).fingerprint
    assert fingerprints["two"] == fingerprints["one"]
