"""Shared fixtures: real data location, a moto S3 server on 127.0.0.1, a tiny prepared dataset."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

# A local Ray started by a test binds to 127.0.0.1 only (with this on, Ray would take the
# machine's outward address); tests/localcluster.py turns it back on for multi-node clusters.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BATCHREC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (MovieLens is not redistributed with batchrec)")
    return SHARED_DATA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 API (moto's server) on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "BATCHREC_S3_ENDPOINT_URL",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        BATCHREC_S3_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(moto_server, request) -> str:
    """A fresh bucket on the moto server; yields `s3://bucket`."""
    import s3fs

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid()}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_server})
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)


def make_tiny_prepared(
    url: str, *, n_users: int = 20, n_items: int = 30, seed: int = 0, string_ids: bool = True
) -> str:
    """A small leave-one-out prepared dataset written through the real writer."""
    from batchrec.dataset import write_prepared

    rng = np.random.default_rng(seed)
    seqs, targets = [], []
    for u in range(n_users):
        n = int(rng.integers(5, 15))
        items = rng.choice(np.arange(1, n_items + 1), size=n, replace=False).astype(np.int32)
        seqs.append(
            {"user_idx": u, "items": items.tolist(), "timestamps": list(range(n)), "train_len": n - 2}
        )
        targets.append({"user_idx": u, "split": "valid", "position": n - 2, "item_idx": int(items[n - 2])})
        targets.append({"user_idx": u, "split": "test", "position": n - 1, "item_idx": int(items[n - 1])})
    item_ids = (
        pa.array([f"i{i}" for i in range(n_items)]) if string_ids else pa.array(np.arange(100, 100 + n_items))
    )
    user_ids = (
        pa.array([f"u{u}" for u in range(n_users)])
        if string_ids
        else pa.array(np.arange(1000, 1000 + n_users))
    )
    return write_prepared(
        url,
        item_ids=item_ids,
        user_ids=user_ids,
        sequences=pa.Table.from_pylist(seqs),
        targets=pa.Table.from_pylist(targets),
        source="tiny-fixture",
        params={"split": "loo"},
        stats={"users": n_users, "items": n_items, "interactions": sum(len(s["items"]) for s in seqs)},
    )


def make_untrained_sasrec(url: str, data_url: str, dim: int) -> str:
    """A randomly initialised one-block SASRec checkpoint for a prepared dataset (scoring tests:
    what matters is that every user gets a list, not its quality)."""
    from batchrec import checkpoint, models
    from batchrec.dataset import PreparedDataset

    ds = PreparedDataset.open(data_url)
    model = models.build("sasrec", ds.n_items, {"dim": dim, "n_layers": 1, "heads": 1, "max_len": 8})
    return checkpoint.save(url, model, data=ds.reference(), item_ids=ds.item_map.external)


def make_synth_prepared(root: Path, seed: int = 0) -> str:
    """400 users walking rings of 400 items (`batchrec data synth`), prepared: the next item is
    predictable, popularity is not. For training tests."""
    from batchrec.data.prepare import PrepareConfig
    from batchrec.data.prepare import run as prepare
    from batchrec.data.synth import SynthConfig
    from batchrec.data.synth import run as synth_run

    raw = synth_run(SynthConfig(out=str(root / "raw"), users=400, items=400, avg_len=20, seed=seed))
    return prepare(PrepareConfig(input=raw, out=str(root / "prepared")))


@pytest.fixture
def tiny_prepared(tmp_path) -> str:
    return make_tiny_prepared(str(tmp_path / "prepared"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


RAY_TRAIN_JOB = """
name: raytrain
workspace: {workspace}
date: "2026-11-23"
stages: [synth, prepare, train, evaluate, score, index]
gate: {{min_value: 0.05}}
synth: {{users: 1500, items: 500, avg_len: 30, seed: 0}}
prepare: {{split: loo}}
train: {{model: sasrec, loss: ce, epochs: 8, batch_size: {batch}, max_len: 50, dim: 64, lr: 0.002,
        seed: 0, device: cpu, workers: {workers}}}
score: {{k: 20, batch_size: 500}}
index: {{}}
"""


def write_ray_train_job(root: Path, workers: int) -> Path:
    """The quickstart's data and model, trained on `workers` Ray Train workers (0: in the
    driver's process), with the same batch per step: `workers` × batch_size = 128."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"job-{workers}.yaml"
    path.write_text(
        RAY_TRAIN_JOB.format(workspace=root / "ws", workers=workers, batch=128 // max(workers, 1))
    )
    return path


def valid_ndcg(checkpoint: str) -> float:
    from batchrec import storage

    return storage.read_json(storage.join(checkpoint, "checkpoint.json"))["metrics"]["valid"]["valid_NDCG@10"]
