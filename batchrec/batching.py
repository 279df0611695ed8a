"""Histories as model input: flat arrays in, left-padded int64 matrices out. Pure numpy.

A history is a slice items[start:end] of one flat array (how `PreparedDataset` stores every
user's sequence). Models read a (B, T) matrix LEFT-padded with 0, the most recent item in
the last column; a history longer than T keeps its last T items. Training cuts histories
into such windows; evaluation and scoring read each user's history once.
"""

from __future__ import annotations

import numpy as np


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """(B, width) int64: items[starts[b]:ends[b]], cut to the last `width`, left-padded with 0."""
    starts = np.maximum(starts, ends - width)
    lengths = ends - starts
    out = np.zeros((len(starts), width), dtype=np.int64)
    cols = width - lengths
    idx = np.arange(width)[None, :] - cols[:, None] + starts[:, None]  # (B, width)
    valid = np.arange(width)[None, :] >= cols[:, None]
    out[valid] = items[idx[valid]]
    return out


def left_pad(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`left_padded` for a list of histories, as wide as the longest (≤ `max_len`), and their lengths."""
    ends = np.cumsum([len(h) for h in histories], dtype=np.int64)
    starts = ends - [len(h) for h in histories]
    items = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, np.int64)
    lengths = np.minimum(ends - starts, max_len)
    return left_padded(items, starts, ends, max(int(lengths.max(initial=0)), 1)), lengths


def ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenated np.arange(starts[i], ends[i]) for all i."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def windows(
    items: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, overlap: int
) -> tuple[np.ndarray, np.ndarray]:
    """(windows, width) int64 left-padded, and each window's history row.

    History i = items[starts[i] : starts[i] + lengths[i]] is cut into windows from its end,
    consecutive windows sharing `overlap` items, so every item is a target once per epoch even
    when a history is longer than the model reads. A window of one item is dropped: its item
    would be a target with no input to predict it from."""
    step = width - overlap
    n_windows = np.maximum(np.ceil((lengths - overlap) / step).astype(np.int64), 0)
    user = np.repeat(np.arange(len(lengths)), n_windows)
    back = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    ends = starts[user] + lengths[user] - back * step
    begins = np.maximum(ends - width, starts[user])
    keep = ends - begins >= 2
    return left_padded(items, begins[keep], ends[keep], width), user[keep]
