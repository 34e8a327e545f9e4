"""docs/MATH.md §6 losses and §7.16 masks: masked, sample-weighted per-task means, never NaN."""
from __future__ import annotations

import math

import torch

from models.losses import GlobalLossNorm, MultiTaskLoss, binary_kl, mutual_term

B, T = 12, 3


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, generator=g)
    labels = torch.rand(B, T, generator=g).round()
    masks = (torch.rand(B, T, generator=g) > 0.3).float()
    weights = torch.rand(B, generator=g) + 0.5
    return logits, labels, masks, weights


def test_task_loss_is_the_masked_weighted_mean_of_bce_and_mse():
    logits, labels, masks, weights = data()
    labels[:, 2] = torch.randn(B) * 3  # regression targets
    loss = MultiTaskLoss([True, True, False], [1.0, 2.0, 0.5], [0.0] * T)
    terms = loss(logits, None, labels, masks, weights)
    for k in range(T):
        rows = [i for i in range(B) if masks[i, k] > 0]
        if k < 2:  # -[y log p + (1-y) log(1-p)], written out
            p = torch.sigmoid(logits[rows, k])
            per_row = -(labels[rows, k] * p.log() + (1 - labels[rows, k]) * (1 - p).log())
        else:
            per_row = (logits[rows, k] - labels[rows, k]) ** 2
        expected = (weights[rows] * per_row).sum() / weights[rows].sum()
        torch.testing.assert_close(terms.per_task[k], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms.total, (torch.tensor([1.0, 2.0, 0.5]) * terms.per_task).sum())


def test_masked_rows_change_nothing_even_with_nan_labels():
    logits, labels, masks, weights = data()
    logits.requires_grad_(True)
    loss = MultiTaskLoss([True] * T, [1.0] * T, [0.5] * T)
    base = loss(logits, None, labels, masks, weights)
    changed = labels.clone()
    changed[masks == 0] = float("nan")  # what a data layer might put in a task's foreign rows
    other = loss(logits, None, changed, masks, weights)
    assert torch.equal(base.per_task, other.per_task)
    (grad,) = torch.autograd.grad(other.total, logits)
    assert torch.isfinite(grad).all() and (grad[masks == 0] == 0).all()
    flipped = labels.clone()
    flipped[masks == 0] = 1 - flipped[masks == 0]
    assert torch.equal(loss(logits, None, flipped, masks, weights).per_task, base.per_task)


def test_all_masked_task_has_zero_loss_and_zero_gradient():
    logits, labels, masks, weights = data()
    masks[:, 1] = 0
    logits.requires_grad_(True)
    global_logits = torch.randn(B, T, requires_grad=True)
    terms = MultiTaskLoss([True] * T, [1.0] * T, [0.5] * T)(logits, global_logits, labels, masks, weights)
    assert terms.per_task[1] == 0 and terms.per_task_global[1] == 0 and terms.dml[1] == 0
    assert terms.per_task[0] > 0
    terms.total.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, 1] == 0).all()
    zero_weights = MultiTaskLoss([True] * T, [1.0] * T, [0.5] * T)(logits, None, labels, masks, torch.zeros(B))
    assert torch.equal(zero_weights.total, torch.tensor(0.0))


def test_soft_labels_are_allowed():
    logits = torch.zeros(4, 1)
    terms = MultiTaskLoss([True], [1.0], [0.0])(logits, None, torch.full((4, 1), 0.3), torch.ones(4, 1), torch.ones(4))
    torch.testing.assert_close(terms.per_task, torch.tensor([math.log(2.0)]))


def test_global_norm_weighs_every_row_of_the_global_batch_alike():
    """Two 'ranks' with different masked row counts: the DDP-averaged global-norm loss equals the
    loss of the concatenated batch; the local norm does not."""
    logits, labels, masks, weights = data()
    halves = [slice(0, 4), slice(4, B)]
    dens = [(masks[h] * weights[h, None]).sum(0) for h in halves]
    norm = GlobalLossNorm(all_reduce_sum=lambda d: dens[0] + dens[1], world_size=2)
    global_loss = MultiTaskLoss([True] * T, [1.0] * T, [0.0] * T, global_norm=norm)
    local_loss = MultiTaskLoss([True] * T, [1.0] * T, [0.0] * T)
    averaged = sum(global_loss(logits[h], None, labels[h], masks[h], weights[h]).total for h in halves) / 2
    full = local_loss(logits, None, labels, masks, weights).total
    torch.testing.assert_close(averaged, full)
    local_avg = sum(local_loss(logits[h], None, labels[h], masks[h], weights[h]).total for h in halves) / 2
    assert not torch.allclose(local_avg, full)


def test_mutual_term_binary_and_regression():
    g = torch.Generator().manual_seed(3)
    local, global_ = torch.randn(64, 2, generator=g) * 4, torch.randn(64, 2, generator=g) * 4
    binary = torch.tensor([True, False])
    for tau in (0.5, 1.0, 3.0):
        dml = mutual_term(local, global_, binary, tau)
        assert (dml >= 0).all()
        assert torch.equal(mutual_term(local, local, binary, tau), torch.zeros(64, 2))
        p, q = torch.sigmoid(local[:, 0].double() / tau), torch.sigmoid(global_[:, 0].double() / tau)
        kl = lambda a, b: a * (a / b).log() + (1 - a) * ((1 - a) / (1 - b)).log()  # noqa: E731
        torch.testing.assert_close(dml[:, 0].double(), tau ** 2 * (kl(q, p) + kl(p, q)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dml[:, 1], 2 * (local[:, 1] - global_[:, 1]) ** 2)
    assert torch.isfinite(binary_kl(torch.tensor([80.0]), torch.tensor([-80.0]))).all()  # saturated, no inf


def test_mutual_term_gradients_stop_at_each_sides_target():
    """Each side only gets the gradient of the term whose target is the other (detached) side:
    binary d/dl tau^2 KL_B(sg(q) || sigmoid(l/tau)) = tau (sigmoid(l/tau) - q); regression 2 (l - g)."""
    local = torch.randn(8, 2, requires_grad=True)
    global_ = torch.randn(8, 2, requires_grad=True)
    tau = 2.0
    dml = mutual_term(local, global_, torch.tensor([True, False]), tau).sum()
    g_local, g_global = torch.autograd.grad(dml, [local, global_])
    p, q = torch.sigmoid(local[:, 0] / tau), torch.sigmoid(global_[:, 0] / tau)
    torch.testing.assert_close(g_local[:, 0], tau * (p - q).detach())
    torch.testing.assert_close(g_global[:, 0], tau * (q - p).detach())
    torch.testing.assert_close(g_local[:, 1], 2 * (local[:, 1] - global_[:, 1]).detach())
    torch.testing.assert_close(g_global[:, 1], 2 * (global_[:, 1] - local[:, 1]).detach())
