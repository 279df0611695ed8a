from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from batchrec import config, storage
from batchrec.errors import UserError


@pytest.mark.parametrize("base", ["local", "memory"])
def test_staged_dir_publishes_all_or_nothing(tmp_path, base):
    root = str(tmp_path) if base == "local" else "memory://staged-test"
    final = storage.join(root, "out")
    with storage.staged_dir(final) as stage:
        storage.write_parquet(pa.table({"a": [1, 2]}), storage.join(stage, "t.parquet"))
    assert storage.is_published(final)
    assert storage.read_parquet(storage.join(final, "t.parquet")).num_rows == 2

    with pytest.raises(RuntimeError), storage.staged_dir(final) as stage:
        storage.write_parquet(pa.table({"a": [9]}), storage.join(stage, "t.parquet"))
        raise RuntimeError("boom")
    assert storage.read_parquet(storage.join(final, "t.parquet")).to_pydict() == {"a": [1, 2]}
    assert [n for n in storage.ls(root) if n.startswith("_staging")] == []

    with storage.staged_dir(final) as stage:
        storage.write_json(storage.join(stage, "x.json"), {"v": 2})
    assert storage.ls(final) == ["_SUCCESS", "x.json"]


def test_s3_roundtrip(s3_bucket):
    final = storage.join(s3_bucket, "run")
    with storage.staged_dir(final) as stage:
        storage.write_json(storage.join(stage, "m.json"), {"ok": True})
    assert storage.read_json(storage.join(final, "m.json")) == {"ok": True}
    assert storage.is_published(final)
    assert not [n for n in storage.ls(s3_bucket) if n.startswith("_staging")]


def test_missing_backend_has_install_hint():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pip install gcsfs"):
            storage.url_to_fs("gs://bucket/x")
    with pytest.raises(UserError, match="not a usable storage URL"):
        storage.url_to_fs("nosuchproto://x/y")


@dataclass
class Inner:
    dim: int = 8
    loss: str = "ce"


@dataclass
class Checked:
    epochs: int = 1

    def validate(self) -> list[str]:
        return [] if self.epochs >= 1 else ["epochs must be ≥ 1"]


@dataclass
class Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)
    ks: list[int] = field(default_factory=lambda: [10])
    checked: Checked = field(default_factory=Checked)


def test_config_reports_all_unknown_keys_at_once():
    with pytest.raises(UserError) as e:
        config.from_dict(Outer, {"nam": 1, "inner": {"dimm": 3}, "lr": "fast"})
    msg = str(e.value)
    assert "nam: unknown key" in msg and "inner.dimm: unknown key" in msg and "lr: 'fast'" in msg


def test_config_overrides_coerce_types():
    data = config.merge(
        {"inner": {"dim": 8}}, config.parse_overrides(["inner.dim=64", "lr=0.01", "ks=[5,10]"])
    )
    cfg = config.from_dict(Outer, data)
    assert cfg.inner.dim == 64 and cfg.lr == 0.01 and cfg.ks == [5, 10]


def test_nested_sections_are_validated_too():
    # A job file's stage sections are nested configs: their own checks must run (was skipped).
    with pytest.raises(UserError, match=r"checked\.epochs must be ≥ 1"):
        config.from_dict(Outer, {"checked": {"epochs": 0}})


def test_a_bad_section_does_not_hide_the_checks_of_the_next():
    # Was: once one section had a problem, later sections were neither built nor validated.
    with pytest.raises(UserError) as e:
        config.from_dict(Outer, {"inner": {"dimm": 3}, "checked": {"epochs": 0}})
    assert "inner.dimm: unknown key" in str(e.value) and "checked.epochs must be ≥ 1" in str(e.value)


def test_newest_published_by_created_at_or_by_date_name(tmp_path):
    from batchrec import workspace

    root = str(tmp_path)
    for name, created in (("b", "2026-11-20"), ("a", "2026-11-22"), ("c", "2026-11-23")):
        storage.write_json(storage.join(root, name, "meta.json"), {"created_at": created})
        if name != "c":  # c is not published
            storage.write_bytes(storage.join(root, name, storage.SUCCESS), b"")
    assert workspace.newest(root, meta_file="meta.json") == storage.join(root, "a")
    for name in ("dt=2026-11-20", "dt=2026-11-21", "dt=2026-11-22", "_staging-dt=2026-11-23-x"):
        storage.write_bytes(storage.join(root, "runs", name, "checkpoint", storage.SUCCESS), b"")
    runs = storage.join(root, "runs")
    storage.write_bytes(storage.join(runs, "dt=2026-11-21", storage.SUCCESS), b"")
    assert workspace.newest(runs, prefix="dt=") == storage.join(runs, "dt=2026-11-21")
    assert workspace.newest(runs, prefix="dt=", before="dt=2026-11-22", inside="checkpoint") == storage.join(
        runs, "dt=2026-11-21", "checkpoint"
    )
    assert workspace.newest(runs, prefix="dt=", before="dt=2026-11-20") is None


def test_latest_checkpoint_skips_runs_still_training(tmp_path):
    from batchrec import workspace

    ws = str(tmp_path)
    for name, created, status in (("a", "2026-11-20", "done"), ("b", "2026-11-22", "training")):
        d = storage.join(workspace.checkpoints_root(ws, "sasrec"), name)
        storage.write_json(
            storage.join(d, "checkpoint.json"), {"created_at": created, "metrics": {"status": status}}
        )
        storage.write_bytes(storage.join(d, storage.SUCCESS), b"")
    assert workspace.latest_checkpoint(ws, "sasrec") == storage.join(
        workspace.checkpoints_root(ws, "sasrec"), "a"
    )
