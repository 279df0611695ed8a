"""Model interface, padding invariance, causality, cloze masking and losses on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from batchrec.errors import UserError
from batchrec.models import MODELS, build
from batchrec.models.layers import Dropout
from batchrec.models.losses import LOSSES, Loss

N = 40
SEQ_MODELS = ["sasrec", "bert4rec", "gru4rec"]


def _model(name: str, **cfg):
    torch.manual_seed(0)
    return build(name, N, {"dim": 16, "max_len": 12, **cfg}).eval()


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_exported_scores_are_what_training_optimises(name):
    m = _model(name)
    seqs = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    users, items = m.encode(seqs, torch.tensor([3, 5])), m.item_embeddings()
    assert items.shape[0] == N + 1 and users.shape == (2, items.shape[1])
    # training scores the next item (causal) or a [MASK] appended after the history (cloze) with
    # the sequence vector there; scoring exports ⟨encode(history), item⟩: the two must agree
    inputs = seqs if m.causal else torch.cat([seqs, torch.full_like(seqs[:, :1], m.mask_id)], 1)
    torch.testing.assert_close(users @ items.T, m.sequence_vectors(inputs)[:, -1] @ items.T)


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("layers", [1, 3])
def test_encode_runs_only_the_last_position_through_the_last_block_and_agrees(name, layers):
    m = _model(name, n_layers=layers, heads=2)
    seqs = torch.tensor([[0, 0, 0, 7, 3], [1, 2, 3, 4, 5], [0, 9, 9, 8, 2]])
    inputs = seqs if m.causal else torch.cat([seqs, torch.full_like(seqs[:, :1], m.mask_id)], 1)
    with torch.inference_mode():
        torch.testing.assert_close(m.encode(seqs, torch.tensor([2, 5, 4])), m.sequence_vectors(inputs)[:, -1])
        assert m.sequence_vectors(inputs, last_only=True).shape[1] == 1


def test_dropout_drops_about_p_and_keeps_the_expectation_exact():
    drop = Dropout(0.25)
    torch.manual_seed(0)
    x = torch.ones(64, 64, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    assert torch.equal(y[kept], torch.full_like(y[kept], 4 / 3))  # p = 0.25 is a multiple of 1/65536
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes where the value does, scaled alike
    torch.manual_seed(0)
    assert torch.equal(drop(torch.ones(64, 64)), y)  # the global seed makes it repeatable
    assert drop.eval()(x) is x and Dropout(0.0)(x) is x


def test_popularity_scores_are_the_training_counts():
    pop = build("pop", 4).fit(np.array([2, 2, 4, 2, 4, 1]))
    scores = pop.encode(torch.tensor([[1], [3]]), torch.tensor([1, 1])) @ pop.item_embeddings().T
    assert scores.tolist() == [[0.0, 1.0, 3.0, 0.0, 2.0]] * 2


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_user_vector_ignores_extra_left_padding(name):
    m = _model(name)
    short = m.encode(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    padded = m.encode(torch.tensor([[0, 0, 0, 0, 3, 4, 5]]), torch.tensor([3]))
    torch.testing.assert_close(short, padded, atol=1e-5, rtol=1e-5)


def test_gru4rec_vectors_do_not_depend_on_the_batch_padding():
    # the same history alone, and beside a longer one that gives it four columns of padding
    m = _model("gru4rec")
    alone = m.encode(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
    in_batch = m.encode(torch.tensor([[0, 0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7]]), torch.tensor([3, 7]))
    torch.testing.assert_close(in_batch[:1], alone, atol=1e-6, rtol=0)
    # per position too, as training reads them: column t has seen the items up to t
    steps = m.sequence_vectors(torch.tensor([[0, 0, 3, 4, 5]]))
    torch.testing.assert_close(steps[:, 2:], m.sequence_vectors(torch.tensor([[3, 4, 5]])), atol=1e-6, rtol=0)
    torch.testing.assert_close(steps[:, -1], alone, atol=1e-6, rtol=0)


def test_sasrec_is_causal():
    m = _model("sasrec")
    a = m.sequence_vectors(torch.tensor([[1, 2, 3, 4]]))
    b = m.sequence_vectors(torch.tensor([[1, 2, 9, 8]]))
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_bert4rec_folds_bias_and_masks_only_real_items():
    m = _model("bert4rec", mask_prob=0.5, replace_80_10_10=True)
    with torch.no_grad():
        m.item_bias[7] = 3.0
    assert m.item_embeddings()[7, -1] == 3.0 and m.encode(torch.tensor([[1, 2]]), None)[0, -1] == 1.0
    seqs = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9]] * 50)
    inputs, labels = m.mask_items(seqs, torch.Generator().manual_seed(0))
    assert (labels[:, :3] == 0).all() and (inputs[:, :3] == 0).all()
    assert (labels > 0).any(dim=1).all()  # every sequence predicts something
    assert ((labels == 0) | (labels == seqs)).all()
    assert (inputs[labels > 0] == m.mask_id).float().mean() > 0.6


def test_bert4rec_never_masks_every_item_of_a_sequence():
    m = _model("bert4rec", mask_prob=0.999)
    inputs, labels = m.mask_items(
        torch.tensor([[0, 5, 6], [4, 5, 6], [0, 0, 7]]), torch.Generator().manual_seed(0)
    )
    # the first item stays readable; a lone item is masked (training windows never hold one)
    assert labels.tolist() == [[0, 0, 6], [0, 5, 6], [0, 0, 7]]
    assert inputs.tolist() == [[0, 5, m.mask_id], [4, m.mask_id, m.mask_id], [0, 0, m.mask_id]]


def test_losses_finite_and_ce_is_full_softmax():
    torch.manual_seed(0)
    users, items = torch.randn(6, 8), torch.randn(N + 1, 8)
    target = torch.tensor([1, 2, 3, 3, 4, 40])
    for name in LOSSES:
        value = Loss(name, N, n_negatives=5)(users, target, items, torch.Generator().manual_seed(0))
        assert torch.isfinite(value), name
    own = (np.array([0, 2, 3]), np.array([1, 2, 3]))
    value = Loss("bce", N, user_items=own)(users, target, items, None, torch.tensor([0, 0, 1, 1, 1, 1]))
    assert torch.isfinite(value)
    logits = users @ items[1:].T
    torch.testing.assert_close(Loss("ce", N)(users, target, items), F.cross_entropy(logits, target - 1))


@pytest.mark.parametrize("n_items", [N, 2**17])  # 2**17 items: blocks of 16 rows, so three blocks
def test_ce_value_and_gradients_are_full_softmax_cross_entropy(n_items):
    torch.manual_seed(0)
    users = torch.randn(40, 4, requires_grad=True)
    items = torch.randn(n_items + 1, 4, requires_grad=True)
    target = torch.randint(1, n_items + 1, (40,))
    got = Loss("ce", n_items)(users, target, items)
    got.backward(torch.tensor(3.0))
    grads = users.grad, items.grad
    users.grad = items.grad = None
    want = F.cross_entropy(users @ items[1:].T, target - 1)
    (3 * want).backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads, (users.grad, items.grad))
    assert not grads[1][0].any()  # padding is no candidate: its row gets no gradient


def test_bce_negatives_are_drawn_outside_the_users_own_items():
    # user 0 had items {1, 2, 3, 5} (3 twice), user 1 {2, 3}, user 2 all five
    loss = Loss(
        "bce", 5, user_items=(np.array([0, 5, 7, 12]), np.array([3, 1, 5, 2, 3, 3, 2, 1, 2, 3, 4, 5]))
    )
    owners = torch.tensor([0] * 300 + [1] * 300 + [2] * 3)
    neg = loss.negatives_outside(owners, torch.Generator().manual_seed(0))
    assert set(neg[:300].tolist()) == {4}
    assert set(neg[300:600].tolist()) == {1, 4, 5}
    assert neg[600:].tolist() == [5, 5, 5]  # no item is outside: item N stands in


def test_inbatch_loss_does_not_count_duplicate_targets_as_negatives():
    users, items = torch.randn(2, 4), torch.randn(N + 1, 4)
    # both rows target item 3: each row's only candidate is its own positive → loss 0
    assert Loss("inbatch", N)(users, torch.tensor([3, 3]), items).item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_model_and_loss_list_the_valid_ones():
    with pytest.raises(UserError, match="sasrec"):
        build("transformer", N)
    with pytest.raises(UserError, match="inbatch"):
        Loss("hinge", N)
    with pytest.raises(UserError, match="n_layer"):
        build("sasrec", N, {"n_layer": 2, "heads": 3})
    assert set(SEQ_MODELS) | {"pop"} <= set(MODELS)  # tests may register extra models
