"""The model and loss registry: names → where they live. Importing it does not import torch, so
configs can validate a model or loss name without it; `model_class` imports the model on use.

A new model: a module in this package with a `SeqRecModel` subclass (see `base.py`), and one line
in `MODELS`. A new loss: a branch in `losses.Loss` and its name in `LossName`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Literal, get_args

from batchrec.errors import UserError

if TYPE_CHECKING:
    from batchrec.models.base import SeqRecModel

# name → "module:Class" (or the class itself, for models registered at run time, e.g. in tests)
MODELS: dict[str, Any] = {
    "pop": "batchrec.models.pop:Popularity",
    "sasrec": "batchrec.models.sasrec:SASRec",
    "bert4rec": "batchrec.models.bert4rec:BERT4Rec",
    "gru4rec": "batchrec.models.gru4rec:GRU4Rec",
}
LossName = Literal["ce", "bce", "sampled", "inbatch"]
LOSSES = get_args(LossName)


def check_model(name: str) -> list[str]:
    """Config validation errors for a model name (empty when known)."""
    return [] if name in MODELS else [f"model: {name!r} is not one of {', '.join(sorted(MODELS))}"]


def model_class(name: str) -> type[SeqRecModel]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}", fix=f"choose one of: {', '.join(sorted(MODELS))}")
    entry = MODELS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def build(name: str, n_items: int, config: dict[str, Any] | None = None) -> SeqRecModel:
    from batchrec.config import from_dict

    cls = model_class(name)
    return cls(n_items, from_dict(cls.Config, config or {}, where=f"model config for {name}"))
