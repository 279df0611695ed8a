"""The Scorer: one batch of users → user vectors and exact top-k unseen items, on CPU or GPU,
without Ray. `batchrec score` runs it inside Ray Data actors; `batchrec recommend` and the
benchmarks call it directly.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from batchrec import batching, distributed, log, ranking, schema

_log = log.get("score")


class Scorer:
    """Load a checkpoint once; map a batch {user_idx, items} to vectors and top-k unseen items.

    Histories are in the checkpoint's internal item ids. Under `exclude_seen="history"` every
    history item is masked; under `"none"` only padding is (repeats may be recommended).

    Returns internal ids: user_idx (B,), embedding (B, d) float32, topk_items (B, k) int32 and
    topk_scores (B, k) float32 in rank order; a slot with score -inf holds no recommendation (the
    user has fewer than k unseen items). On CUDA the encoder runs under bf16 autocast; the vectors
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

        self.device = distributed.device(device or "auto")
        # `threads` on CPU: that many independent lanes of one thread each, every lane encoding and
        # searching its share of a batch, instead of one batch through `threads` OpenMP threads. An
        # OpenMP region waits at its barrier for a thread the OS preempted (Ray's driver, raylet and
        # read tasks share the cores), leaving the other core idle; lanes never wait for each other:
        # 2 lanes vs 2 threads scored 1.33x faster quiet and 1.49x beside a 0.35-core load (issue 17).
        # Without `threads`: the caller's thread, with torch's and FAISS's own thread counts.
        self.n_lanes, self.lanes = 0, None
        if threads and self.device.type == "cpu":
            torch.set_num_threads(1)
            # the same threads for every batch: glibc gives a new thread a malloc arena of its own,
            # and a pool per batch took 0.6 GiB more than one thread at 100k users (issue 17)
            self.n_lanes = threads
            self.lanes = ThreadPoolExecutor(threads, "scorer-lane", initializer=_one_faiss_thread)
        self.model, self.meta = ckpt.load(checkpoint, map_location=self.device)
        with torch.no_grad():
            self.items = self.model.item_embeddings().detach().float().contiguous()  # (N + 1, d)
        self.n_items = self.items.shape[0] - 1
        self.k = min(k, self.n_items)
        self.encode_batch, self.user_chunk, self.item_chunk = encode_batch, user_chunk, item_chunk
        self.mask_history = exclude_seen == "history"
        self.fault = fault
        # CPU top-k goes through a FAISS index: brute force (exact), or the ANN index when asked
        # for and faster; GPU top-k is the chunked matmul.
        self.search_index = None
        self.searched_with = "exact"
        if retrieval == "faiss":
            from batchrec import ann

            index, info = ann.build_index_with_info(self.item_vectors()[1:], None, "ip", tune_k=self.k)
            slow = ann.slower_than_exact(index)
            if slow:
                _log.info("--retrieval faiss searches exactly: %s, where brute force is faster", slow)
                self.searched_with = f"exact ({slow})"
            else:
                self.search_index = index  # row r = item r + 1
                params = ",".join(f"{k}={v}" for k, v in info.search_params.items())
                self.searched_with = f"faiss {info.factory}" + (f" {params}" if params else "")
        if self.device.type == "cpu":
            import faiss

            faiss.omp_set_num_threads(torch.get_num_threads())  # FAISS's own thread pool, sized like torch's
            if self.search_index is None:
                self.search_index = _flat_index(self.item_vectors()[1:])

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
        """Top-k over the catalogue, padding (and seen items) excluded: exact unless an ANN index searches."""
        if not self.mask_history:
            histories = [h[:0] for h in histories]
        if self.search_index is not None:
            return self._topk_faiss(users.float().cpu().numpy(), histories)
        return self._topk_chunked(users, histories)

    def _topk_faiss(self, users: np.ndarray, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """CPU: the FAISS index (brute force: its GEMM tiles feed a per-user heap, so no score
        matrix is ever materialised) fetches k + the block's longest history, which must contain
        the k best unseen items among those it finds; seen ones are then dropped. Users go in
        blocks of similar history length so one heavy user does not widen every row's fetch.
        Both index kinds hold the raw item vectors, so the scores are fp32 ⟨user, item⟩."""
        n = len(histories)
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        out_items = np.zeros((n, self.k), dtype=np.int32)
        out_scores = np.full((n, self.k), -np.inf, dtype=np.float32)
        for b0 in range(0, n, self.user_chunk):
            rows = order[b0 : b0 + self.user_chunk]
            fetch = min(self.n_items, self.k + int(lengths[rows].max()))
            scores, found = self.search_index.search(np.ascontiguousarray(users[rows]), fetch)
            cand = found + 1  # item row r is internal id r + 1; FAISS's -1 (none) becomes padding
            seen = np.concatenate([histories[r] for r in rows]) if len(rows) else np.zeros(0, np.int64)
            owner = np.repeat(np.arange(len(rows)), lengths[rows])
            width = self.n_items + 1
            drop = np.isin(np.arange(len(rows))[:, None] * width + cand, owner * width + seen)
            drop |= cand == schema.PAD
            # unmasked candidates first, each row keeping FAISS's descending score order
            keep = np.argsort(drop, axis=1, kind="stable")[:, : self.k]
            scores = np.where(drop, -np.inf, scores).astype(np.float32)
            out_items[rows] = np.take_along_axis(np.where(drop, schema.PAD, cand), keep, 1)
            out_scores[rows] = np.take_along_axis(scores, keep, 1)
        return out_items, out_scores

    def _topk_chunked(self, users: Any, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """GPU: chunked matmul with a running top-k merge."""
        import torch

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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_fail()
        histories = [np.asarray(h, dtype=np.int64) for h in batch["items"]]
        if self.lanes is None:
            parts = [self._encode_and_rank(histories)]
        else:
            lanes = max(1, min(self.n_lanes, len(histories)))
            cuts = np.linspace(0, len(histories), lanes + 1).astype(int)
            shares = [histories[a:b] for a, b in itertools.pairwise(cuts)]
            parts = list(self.lanes.map(self._encode_and_rank, shares))
        vectors, items, scores = (np.concatenate(column) for column in zip(*parts, strict=True))
        return {
            "user_idx": np.asarray(batch["user_idx"], dtype=np.int32),
            "embedding": vectors,
            "topk_items": items,
            "topk_scores": scores,
        }

    def _encode_and_rank(self, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        users = self.encode(histories)
        items, scores = self.topk(users, histories)
        return users.cpu().numpy(), items, scores

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


def _one_faiss_thread() -> None:
    """A lane's thread: FAISS (and its OpenMP OpenBLAS) search with this thread alone. OpenMP's
    thread count is per thread, so the Scorer's own setting does not reach new threads."""
    import faiss

    faiss.omp_set_num_threads(1)


def _flat_index(vectors: np.ndarray):
    """Exact inner-product index over the item rows, with FAISS's BLAS path on from the first
    query (by default it takes it only from 128k queries at once) and GEMM tiles of 512 users ×
    2048 items, which measured fastest here for d=64 and k ≈ 100-150 (BENCHMARKS.md, issue 17)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 20
    faiss.cvar.distance_compute_blas_query_bs = 512
    faiss.cvar.distance_compute_blas_database_bs = 2048
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index
