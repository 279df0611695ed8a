"""The Scorer: one batch of users → user vectors and exact top-k unseen items, on CPU or GPU,
without Ray. `batchrec score` runs it inside Ray Data actors; `batchrec recommend` and the
benchmarks call it directly.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from batchrec import batching, distributed, ranking, schema


class Scorer:
    """Load a checkpoint once; map a batch {user_idx, items} to vectors and top-k unseen items.

    Histories are in the checkpoint's internal item ids. Under `exclude_seen="history"` every
    history item is masked; under `"none"` only padding is (repeats may be recommended).

    Returns internal ids: user_idx (B,), embedding (B, d) float32, topk_items (B, k) int32 and
    topk_scores (B, k) float32 in rank order; a slot with score -inf is a masked item (the user
    has fewer than k unseen items). On CUDA the encoder runs under bf16 autocast; the vectors
    are then cast to float32 and scored in float32, so every exported score is exactly
    ⟨exported user vector, exported item vector⟩ up to float rounding.
    """

    def __init__(
        self,
        checkpoint: str,
        *,
        k: int = 100,
        device: str | None = None,
        encode_batch: int = 512,
        user_chunk: int = 1024,
        item_chunk: int = 32768,
        threads: int | None = None,
        retrieval: str = "exact",
        exclude_seen: str = ranking.DEFAULT_SEEN_POLICY,
        fault: str | None = None,
    ):
        import torch

        from batchrec import checkpoint as ckpt

        if threads:
            torch.set_num_threads(threads)
        self.device = distributed.device(device or "auto")
        self.model, self.meta = ckpt.load(checkpoint, map_location=self.device)
        with torch.no_grad():
            self.items = self.model.item_embeddings().detach().float().contiguous()  # (N + 1, d)
        self.n_items = self.items.shape[0] - 1
        self.k = min(k, self.n_items)
        self.encode_batch, self.user_chunk, self.item_chunk = encode_batch, user_chunk, item_chunk
        self.mask_history = exclude_seen == "history"
        self.fault = fault
        self.index = None
        if retrieval == "faiss":
            from batchrec import ann

            self.index = ann.build_index(self.item_vectors()[1:], None, "ip")  # row r = item r + 1

    @property
    def d(self) -> int:
        return int(self.items.shape[1])

    def item_vectors(self) -> np.ndarray:
        return self.items.cpu().numpy()

    def encode(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, d) float32 user vectors; sorted by length so each sub-batch pads only to its own longest."""
        import torch

        order = np.argsort([len(h) for h in histories], kind="stable")
        out = torch.empty(len(histories), self.d, dtype=torch.float32, device=self.device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with torch.inference_mode(), autocast:
            for s in range(0, len(order), self.encode_batch):
                rows = order[s : s + self.encode_batch]
                seqs, lengths = batching.left_pad([histories[r] for r in rows], self.model.max_len)
                vec = self.model.encode(
                    torch.from_numpy(seqs).to(self.device), torch.from_numpy(lengths).to(self.device)
                )
                out[torch.from_numpy(rows).to(self.device)] = vec.float()
        return out

    def topk(self, users: Any, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the catalogue by chunked matmul, padding (and seen items) masked."""
        import torch

        if not self.mask_history:
            histories = [h[:0] for h in histories]
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        seen_rows = torch.from_numpy(np.repeat(np.arange(len(histories)), lengths)).to(self.device)
        seen_items = torch.from_numpy(
            np.concatenate(histories).astype(np.int64) if len(histories) else np.zeros(0, np.int64)
        ).to(self.device)
        all_scores, all_items = [], []
        with torch.inference_mode():
            for u0 in range(0, len(histories), self.user_chunk):
                u1 = min(u0 + self.user_chunk, len(histories))
                in_users = (seen_rows >= u0) & (seen_rows < u1)
                rows_u, items_u = seen_rows[in_users] - u0, seen_items[in_users]
                best_s = torch.empty(u1 - u0, 0, device=self.device)
                best_i = torch.empty(u1 - u0, 0, dtype=torch.int64, device=self.device)
                for c0 in range(0, self.n_items + 1, self.item_chunk):
                    c1 = min(c0 + self.item_chunk, self.n_items + 1)
                    s = users[u0:u1] @ self.items[c0:c1].T  # (b, C)
                    if c0 == 0:
                        s[:, schema.PAD] = -torch.inf
                    hit = (items_u >= c0) & (items_u < c1)
                    s[rows_u[hit], items_u[hit] - c0] = -torch.inf
                    v, i = s.topk(min(self.k, c1 - c0), dim=1)
                    best_s, pick = torch.cat([best_s, v], 1).topk(
                        min(self.k, best_s.shape[1] + v.shape[1]), 1
                    )
                    best_i = torch.cat([best_i, i + c0], 1).gather(1, pick)
                all_scores.append(best_s.cpu())
                all_items.append(best_i.cpu())
        return (
            torch.cat(all_items).numpy().astype(np.int32),
            torch.cat(all_scores).numpy().astype(np.float32),
        )

    def topk_ann(self, users: Any, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Top-k through the FAISS index: over-fetch by the longest history, drop seen items, rescore exactly."""
        from batchrec import ann

        queries = users.float().cpu().numpy()
        if not self.mask_history:
            histories = [h[:0] for h in histories]
        fetch = min(self.n_items, self.k + max((len(h) for h in histories), default=0))
        _, rows = ann.search(self.index, queries, fetch)
        cand = rows + 1  # internal ids; 0 where FAISS found fewer than `fetch`
        items_np = self.item_vectors()
        scores = np.einsum("bd,bkd->bk", queries, items_np[cand]).astype(np.float32)
        for row, h in enumerate(histories):
            scores[row, np.isin(cand[row], h) | (cand[row] == schema.PAD)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        return (
            np.take_along_axis(cand, order, 1).astype(np.int32),
            np.take_along_axis(scores, order, 1),
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_fail()
        histories = [np.asarray(h, dtype=np.int64) for h in batch["items"]]
        users = self.encode(histories)
        items, scores = self.topk(users, histories) if self.index is None else self.topk_ann(users, histories)
        return {
            "user_idx": np.asarray(batch["user_idx"], dtype=np.int32),
            "embedding": users.cpu().numpy(),
            "topk_items": items,
            "topk_scores": scores,
        }

    def _maybe_fail(self) -> None:
        if not self.fault:
            return
        if self.fault == "raise":
            raise RuntimeError("injected scoring fault (fault=raise)")
        if self.fault == "hang":
            threading.Event().wait()
        if self.fault.startswith("slow:"):
            time.sleep(float(self.fault.partition(":")[2]))
        kind, _, path = self.fault.partition(":")
        if kind == "kill-once" and not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
