"""Model registry: name → class. Each class carries its `Config` dataclass."""

from __future__ import annotations

from typing import Any

from batchrec.errors import UserError
from batchrec.models.base import SeqRecModel
from batchrec.models.bert4rec import BERT4Rec
from batchrec.models.gru4rec import GRU4Rec
from batchrec.models.pop import Popularity
from batchrec.models.sasrec import SASRec

MODELS: dict[str, type[SeqRecModel]] = {
    "pop": Popularity,
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
}


def model_class(name: str) -> type[SeqRecModel]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}", fix=f"choose one of: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build(name: str, n_items: int, config: dict[str, Any] | None = None) -> SeqRecModel:
    from batchrec.config import from_dict

    cls = model_class(name)
    return cls(n_items, from_dict(cls.Config, config or {}, where=f"model config for {name}"))
