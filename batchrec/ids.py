"""External ↔ internal id maps (the RecTools `IdMap` idea, frozen and Arrow-backed).

External ids keep their original Arrow type (int64 or string) and appear only at ingest and
export; everything between uses dense internal ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchrec.errors import UserError


@dataclass(frozen=True)
class IdMap:
    """`external[i]` is the external id of internal id `offset + i`."""

    external: pa.Array
    offset: int  # 1 for items (0 = padding), 0 for users

    def __len__(self) -> int:
        return len(self.external)

    @property
    def type(self) -> pa.DataType:
        return self.external.type

    def to_external(self, internal: np.ndarray | pa.Array) -> pa.Array:
        idx = np.asarray(internal, dtype=np.int64) - self.offset
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.external)):
            raise UserError(f"internal id out of range 0..{len(self.external) + self.offset - 1}")
        return self.external.take(pa.array(idx))

    def to_internal(self, external: pa.Array | list, *, strict: bool = True) -> np.ndarray:
        """Internal ids for external ids; unknown ids raise (strict) or map to -1."""
        arr = pa.array(external) if not isinstance(external, pa.Array | pa.ChunkedArray) else external
        if arr.type != self.external.type:
            try:
                arr = arr.cast(self.external.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise UserError(f"id type {arr.type} does not match the id map's {self.external.type}") from e
        pos = pc.index_in(arr, value_set=self.external)
        missing = pos.null_count
        if strict and missing:
            bad = arr.filter(pc.is_null(pos)).slice(0, 5).to_pylist()
            raise UserError(
                f"{missing} unknown id(s), e.g. {bad}", fix="use ids present in the prepared data"
            )
        return pos.fill_null(-1 - self.offset).to_numpy(zero_copy_only=False).astype(np.int64) + self.offset

    def fingerprint(self) -> str:
        """A content hash of the map (type + ids in order), independent of Arrow chunking."""
        h = hashlib.sha256(str(self.external.type).encode())
        arr = self.external
        if pa.types.is_integer(arr.type):
            h.update(np.ascontiguousarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())
        else:
            h.update("\x00".join(map(str, arr.to_pylist())).encode())
        return h.hexdigest()[:16]


def parse_id(text: str, type_: pa.DataType, what: str) -> Any:
    """A command-line id converted to the id map's type (ids keep their original type)."""
    try:
        return pa.scalar(text).cast(type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UserError(
            f"{what} id {text!r} is not a valid {type_}", fix=f"{what} ids here are {type_}"
        ) from e
