"""The checkpoint artifact: weights + model config + data reference + metrics (layout in schema).

Written atomically to any fsspec URL (staged, then published with `_SUCCESS`); loaded with
`torch.load(weights_only=True)`, so a checkpoint can never run code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from batchrec import __version__, schema, storage
from batchrec.errors import UserError
from batchrec.ids import IdMap
from batchrec.models import build
from batchrec.models.base import SeqRecModel


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
        "created_at": schema.created_at(),
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
    if not storage.is_published(url, schema.CHECKPOINT_META):
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


@dataclass(frozen=True)
class Vocabulary:
    """A prepared dataset's items seen through a checkpoint's item vocabulary, by external id.

    Sequence models are inductive: any user's history can be encoded, so a checkpoint scores
    data other than its training set (more users, today's histories) as long as the items are
    translated. Items the model never saw have no vector and are dropped from histories.
    """

    items: IdMap  # the checkpoint's items: external id of model item 1..N
    to_model: np.ndarray  # (data items + 1,) int64: data internal id → model internal id, 0 = unknown
    data_items: int
    identity: bool = False  # the data's item map is the checkpoint's: nothing to translate (per batch)

    @property
    def known(self) -> int:
        return int(np.count_nonzero(self.to_model[1:]))

    def translate(self, history: np.ndarray) -> np.ndarray:
        """A history in model ids, unknown items dropped (order kept)."""
        mapped = self.to_model[history]
        return mapped[mapped > 0]


def vocabulary(
    url: str, meta: dict[str, Any], data_item_map: IdMap, data_item_fingerprint: str
) -> Vocabulary:
    """Map a dataset's items onto the checkpoint at `url`; the same map is the identity."""
    n_data = len(data_item_map)
    if meta.get("data", {}).get("item_map_fingerprint") == data_item_fingerprint:
        return Vocabulary(data_item_map, np.arange(n_data + 1, dtype=np.int64), n_data, identity=True)
    ids = load_item_ids(url)
    if ids is None:
        raise UserError(
            "the checkpoint was trained on other items and keeps no item map to translate them",
            where=url,
            fix="score/evaluate with the prepared data the model was trained on, or retrain with this batchrec",
        )
    model_items = IdMap(ids, offset=1)
    if ids.type != data_item_map.type:
        raise UserError(
            f"the data's item ids are {data_item_map.type}, the checkpoint's are {ids.type}",
            where=url,
            fix="prepare the data with the same item id column as the training data",
        )
    to_model = np.zeros(n_data + 1, dtype=np.int64)
    to_model[1:] = np.maximum(model_items.to_internal(data_item_map.external, strict=False), 0)
    return Vocabulary(model_items, to_model, n_data)
