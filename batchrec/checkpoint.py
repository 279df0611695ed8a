"""The checkpoint artifact: weights + model config + data reference + metrics (layout in schema).

Written atomically to any fsspec URL (staged, then published with `_SUCCESS`); loaded with
`torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import asdict, is_dataclass
from typing import Any

import pyarrow as pa
import torch

from batchrec import __version__, schema, storage
from batchrec.errors import UserError
from batchrec.models import SeqRecModel, build


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(
    url: str,
    model: SeqRecModel,
    *,
    data: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    item_ids: pa.Array | None = None,
) -> str:
    """Publish a checkpoint at `url`, replacing any previous one there.

    `data` references the prepared dataset: url, fingerprint, item_map_fingerprint, n_items.
    `item_ids` (external id of internal item 1..N) is stored beside the weights, so a later
    training run can warm-start by external id after the old data is gone.
    """
    weights = _to_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()})
    meta = {
        "batchrec_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model.name,
        "model_config": asdict(model.config) if is_dataclass(model.config) else dict(model.config),
        "n_items": data["n_items"],
        "data": data,
        "metrics": metrics or {},
        "train_config": train_config or {},
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    with storage.staged_dir(url) as stage:
        storage.write_bytes(storage.join(stage, schema.CHECKPOINT_WEIGHTS), weights)
        if train_state is not None:
            storage.write_bytes(storage.join(stage, schema.CHECKPOINT_TRAIN_STATE), _to_bytes(train_state))
        if item_ids is not None:
            storage.write_parquet(pa.table({"item_id": item_ids}), storage.join(stage, schema.ITEM_MAP))
        storage.write_json(storage.join(stage, schema.CHECKPOINT_META), meta)
    return url


def read_meta(url: str) -> dict[str, Any]:
    meta_url = storage.join(url, schema.CHECKPOINT_META)
    if not storage.is_published(url) or not storage.exists(meta_url):
        raise UserError(
            "no checkpoint here (checkpoint.json or _SUCCESS missing)",
            where=url,
            fix="train one with `batchrec train`, or pass --checkpoint with its URL",
        )
    try:
        return storage.read_json(meta_url)
    except ValueError as e:
        raise UserError(f"checkpoint.json is corrupt: {e}", where=meta_url) from e


def load(url: str, map_location: str | torch.device = "cpu") -> tuple[SeqRecModel, dict[str, Any]]:
    """The model (in eval mode) and the checkpoint metadata."""
    meta = read_meta(url)
    weights_url = storage.join(url, schema.CHECKPOINT_WEIGHTS)
    if not storage.exists(weights_url):
        raise UserError(
            "checkpoint has no model.pt", where=url, fix="train again; the checkpoint is incomplete"
        )
    raw = storage.read_bytes(weights_url)
    if meta.get("weights_sha256") and hashlib.sha256(raw).hexdigest() != meta["weights_sha256"]:
        raise UserError(
            "checkpoint weights are truncated or corrupt (checksum mismatch)",
            where=weights_url,
            fix="retrain, or restore the checkpoint from a good copy",
        )
    try:
        state = torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint weights cannot be read: {e}", where=weights_url) from e
    model = build(meta["model"], int(meta["n_items"]), meta.get("model_config"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit the model config: {e}", where=url) from e
    return model.to(map_location).eval(), meta


def load_train_state(url: str, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    state_url = storage.join(url, schema.CHECKPOINT_TRAIN_STATE)
    if not storage.exists(state_url):
        return None
    return torch.load(io.BytesIO(storage.read_bytes(state_url)), map_location=map_location, weights_only=True)


def load_item_ids(url: str) -> pa.Array | None:
    """External ids of internal items 1..N as trained, if the checkpoint stored them."""
    map_url = storage.join(url, schema.ITEM_MAP)
    if not storage.exists(map_url):
        return None
    return storage.read_parquet(map_url).column("item_id").combine_chunks()


def check_data(meta: dict[str, Any], item_map_fingerprint: str, n_items: int, where: str) -> None:
    """Refuse to use a checkpoint with data whose item id map differs from the one it was trained on."""
    data = meta.get("data", {})
    if data.get("item_map_fingerprint") != item_map_fingerprint or int(meta.get("n_items", -1)) != n_items:
        raise UserError(
            f"the checkpoint's item id map (fingerprint {data.get('item_map_fingerprint')}, "
            f"{meta.get('n_items')} items) does not match the data's ({item_map_fingerprint}, {n_items} items)",
            where=where,
            fix="score/evaluate with the prepared data the model was trained on, or retrain on this data",
        )
