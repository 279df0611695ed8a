"""`batchrec data synth`: schema, determinism, chunking, and a sequential signal popularity cannot see."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from batchrec import storage
from batchrec.data import prepare, synth
from batchrec.dataset import PreparedDataset
from cli import app

runner = CliRunner()


def _synth(out, **kw) -> pa.Table:
    synth.run(synth.SynthConfig(out=str(out), **kw))
    return pq.read_table(str(out))


def test_schema_parts_and_size(tmp_path):
    t = _synth(tmp_path / "s", users=300, items=200, avg_len=20, seed=1)
    assert t.schema == pa.schema(
        [("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())]
    )
    assert storage.is_published(str(tmp_path / "s"))
    assert len(np.unique(t.column("user_id").to_numpy())) == 300
    items = t.column("item_id").to_numpy()
    assert items.min() >= 1 and items.max() <= 200
    assert 15 < t.num_rows / 300 < 25


def test_deterministic_by_seed_and_chunked(tmp_path, monkeypatch):
    a = _synth(tmp_path / "a", users=500, items=100, seed=3)
    b = _synth(tmp_path / "b", users=500, items=100, seed=3)
    c = _synth(tmp_path / "c", users=500, items=100, seed=4)
    assert a.equals(b) and not a.equals(c)
    monkeypatch.setattr(synth, "CHUNK_USERS", 120)
    parts = _synth(tmp_path / "p", users=500, items=100)
    assert len([n for n in storage.ls(str(tmp_path / "p")) if n.endswith(".parquet")]) == 5
    assert len(np.unique(parts.column("user_id").to_numpy())) == 500


def test_timestamps_rise_within_each_user(tmp_path):
    t = _synth(tmp_path / "s", users=100, items=100).to_pandas()
    assert t.groupby("user_id")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()


def test_next_item_beats_popularity_by_far(tmp_path):
    """A last-item transition model (what a sequence model can learn) vs popularity, NDCG@10 on test."""
    raw = synth.run(synth.SynthConfig(out=str(tmp_path / "raw"), users=1500, items=500, avg_len=30))
    ds = PreparedDataset.open(prepare.run(prepare.PrepareConfig(input=raw, out=str(tmp_path / "p"))))
    _, offsets, items, train_len = ds.flat_sequences()
    n = ds.n_items + 1
    lengths = np.diff(offsets)
    position = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
    in_train = position < np.repeat(train_len, lengths)
    pairs = np.flatnonzero(in_train[:-1] & in_train[1:] & (position[1:] > 0))
    trans = np.zeros((n, n))
    np.add.at(trans, (items[pairs], items[pairs + 1]), 1)
    pop = np.bincount(items[in_train], minlength=n).astype(float)
    rows, pos, target = ds.split_targets("test")

    def ndcg(scores: np.ndarray) -> float:
        scores = scores.copy()
        scores[:, 0] = -np.inf
        for k, (r, p) in enumerate(zip(rows, pos, strict=True)):
            scores[k, items[offsets[r] : offsets[r] + p]] = -np.inf
        rank = (scores > scores[np.arange(len(target)), target][:, None]).sum(1)
        return float(np.where(rank < 10, 1 / np.log2(rank + 2), 0).mean())

    last = items[offsets[rows] + pos - 1]
    pop_ndcg = ndcg(np.tile(pop, (len(rows), 1)))
    seq_ndcg = ndcg(trans[last] + 1e-6 * pop)
    assert seq_ndcg > 2 * pop_ndcg, (seq_ndcg, pop_ndcg)


def test_cli_default_out_in_workspace(tmp_path):
    res = runner.invoke(
        app, ["data", "synth", "--users", "50", "--items", "40", "--workspace", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert storage.is_published(str(tmp_path / "raw" / "synth"))
