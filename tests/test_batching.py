"""Batching and the training objective on tiny literal inputs with literal expected outputs."""

from __future__ import annotations

import numpy as np
import torch

from batchrec.batching import left_pad, left_padded, ranges, windows
from batchrec.models import build
from batchrec.models.losses import Loss, Objective


def test_left_padded_cuts_to_the_last_width_items():
    items = np.arange(10, 20)
    assert left_padded(items, np.array([0, 5]), np.array([2, 10]), 3).tolist() == [[0, 10, 11], [17, 18, 19]]


def test_left_pad_is_as_wide_as_the_longest_history_up_to_max_len():
    seqs, lengths = left_pad([np.array([1, 2, 3, 4, 5]), np.array([7]), np.array([], dtype=np.int64)], 3)
    assert seqs.tolist() == [[3, 4, 5], [0, 0, 7], [0, 0, 0]] and lengths.tolist() == [3, 1, 0]
    seqs, lengths = left_pad([np.array([4]), np.array([8, 9])], 5)
    assert seqs.tolist() == [[0, 4], [8, 9]] and lengths.tolist() == [1, 2]


def test_ranges():
    assert ranges(np.array([2, 7, 9]), np.array([4, 7, 10])).tolist() == [2, 3, 9]


def test_windows_cut_from_the_end_and_never_hold_a_lone_item():
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8])  # histories [1..5], [6, 7], [8]
    starts, lengths = np.array([0, 5, 7]), np.array([5, 2, 1])
    mat, users = windows(items, starts, lengths, width=3, overlap=1)  # causal: windows share one item
    assert mat.tolist() == [[3, 4, 5], [1, 2, 3], [0, 6, 7]] and users.tolist() == [0, 0, 1]
    mat, users = windows(items, starts, lengths, width=2, overlap=0)  # cloze: [1] and [8] are dropped
    assert mat.tolist() == [[4, 5], [2, 3], [6, 7]] and users.tolist() == [0, 0, 1]


def test_models_declare_their_training_windows_and_patience():
    sasrec = build("sasrec", 10, {"max_len": 3})
    bert = build("bert4rec", 10, {"max_len": 3})
    assert sasrec.window() == (4, 1) and sasrec.patience == 8
    assert bert.window() == (3, 0) and bert.patience == 40
    assert not build("pop", 10).trained_by_gradient


def test_causal_targets_need_an_item_before_them():
    model = build("sasrec", 10, {"dim": 8, "max_len": 3})
    pick, vecs, targets = model.train_batch(torch.tensor([[0, 0, 6, 7], [3, 4, 5, 6]]))
    # 6 opens the first user's history: nothing before it to predict it from
    assert targets.tolist() == [[0, 6, 7], [4, 5, 6]]
    assert pick.tolist() == [[False, False, True], [True, True, True]] and vecs.shape == (2, 3, 8)


def test_cloze_targets_are_the_masked_items_and_one_item_stays_visible():
    model = build("bert4rec", 10, {"dim": 8, "max_len": 4, "mask_prob": 0.999, "replace_80_10_10": False})
    pick, _, targets = model.train_batch(
        torch.tensor([[0, 0, 6, 7], [3, 4, 5, 6]]), torch.Generator().manual_seed(0)
    )
    # (almost surely) everything chosen: each window gets its first real item back as the input
    assert targets.tolist() == [[0, 0, 0, 7], [0, 4, 5, 6]] and pick.sum().item() == 4


def test_objective_trims_all_padding_columns_and_equals_the_loss_on_picked_positions():
    torch.manual_seed(0)
    model = build("sasrec", 10, {"dim": 8, "max_len": 4, "dropout": 0.0}).eval()
    objective = Objective(model, Loss("ce", 10))
    batch = torch.tensor([[0, 0, 6, 7, 8], [0, 3, 4, 5, 6]])
    got = objective(batch, torch.Generator())
    vecs = model.sequence_vectors(torch.tensor([[0, 6, 7], [3, 4, 5]]))  # column 0 trimmed
    picked = torch.stack([vecs[0, 1], vecs[0, 2], vecs[1, 0], vecs[1, 1], vecs[1, 2]])
    logits = picked @ model.item_embeddings().T
    logits[:, 0] = float("-inf")
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([7, 8, 4, 5, 6]))
    assert torch.allclose(got, want, atol=1e-6)
