"""CRD: NCE loss and scores against loop references, bank and queue memories (sampling, Z, updates, grads)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError
from kdlab.losses.contrastive import crd_nce, crd_scores
from kdlab.methods.crd_memory import CRDMemory


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(_rand(*shape, seed=seed), dim=-1)


def _ref_nce(scores: list[list[float]], n_data: int, eps: float = 1e-7, mask=None) -> float:
    total = 0.0
    for i, row in enumerate(scores):
        negs = [(j, h) for j, h in enumerate(row[1:]) if mask is None or mask[i][j]]
        noise = len(negs) / n_data
        total -= math.log(row[0] / (row[0] + noise + eps))
        for _, h in negs:
            total -= math.log(noise / (h + noise + eps))
    return total / len(scores)


def _memory_numel(mem: CRDMemory) -> int:
    return sum(v.numel() for v in mem.state_dict().values() if isinstance(v, torch.Tensor))


# --------------------------------------------------------------------------------------------- pure


def test_crd_nce_matches_loop_reference():
    scores = _rand(4, 9, seed=1).double().exp() * 1e-3
    assert crd_nce(scores, n_data=500).item() == pytest.approx(_ref_nce(scores.tolist(), 500), rel=1e-10)


def test_crd_nce_mask_excludes_columns_and_full_mask_is_plain():
    scores = _rand(3, 7, seed=2).double().exp() * 1e-2
    full = torch.ones(3, 6, dtype=torch.bool)
    assert crd_nce(scores, 100, negative_mask=full).item() == pytest.approx(
        crd_nce(scores, 100).item(), rel=1e-12
    )
    mask = torch.rand(3, 6, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[1] = False  # an anchor without valid negatives stays finite
    ref = _ref_nce(scores.tolist(), 100, mask=mask.tolist())
    out = crd_nce(scores, 100, negative_mask=mask)
    assert out.item() == pytest.approx(ref, rel=1e-10)
    s = scores.clone().requires_grad_()
    crd_nce(s, 100, negative_mask=mask).backward()
    assert torch.isfinite(s.grad).all()
    assert torch.all(s.grad[:, 1:][~mask] == 0)


def test_crd_scores_formula_and_errors():
    anchor, rows = _unit(3, 5, seed=4), _unit(3, 4, 5, seed=5)
    expected = torch.exp(torch.einsum("bd,bkd->bk", anchor, rows) / 0.07)
    torch.testing.assert_close(crd_scores(anchor, rows), expected)
    with pytest.raises(ValueError, match="memory rows"):
        crd_scores(anchor, _unit(3, 4, 6))
    with pytest.raises(ValueError, match="K >= 1"):
        crd_nce(torch.ones(3, 1), 10)


# --------------------------------------------------------------------------------------------- bank


def _bank(
    n: int = 200, classes: int = 5, k: int = 32, dim: int = 16, seed: int = 0
) -> tuple[CRDMemory, torch.Tensor]:
    targets = torch.arange(n) % classes
    return CRDMemory(n_data=n, feature_dim=dim, num_negatives=k, targets=targets, seed=seed), targets


def test_bank_init_and_negatives_never_share_class():
    mem, targets = _bank()
    bound = math.sqrt(3 / 16)
    assert mem.memory_s.shape == (200, 16) and mem.memory_s.abs().max() <= bound
    assert not mem.memory_s.requires_grad
    idx = torch.arange(0, 200, 3)
    neg = mem.sample_negatives(idx)
    assert neg.shape == (len(idx), 32)
    assert (targets[neg] != targets[idx].unsqueeze(1)).all()
    assert neg.min() >= 0 and neg.max() < 200
    # all other-class samples are reachable (uniform, not just a fixed subset)
    many = mem.sample_negatives(torch.zeros(200, dtype=torch.long))
    assert set(many.flatten().tolist()) == set(torch.nonzero(targets != 0).flatten().tolist())


def test_bank_loss_uses_own_index_as_positive_and_fixes_z():
    mem, targets = _bank(seed=7)
    mem.eval()  # no update, so the reference can read the same memory
    idx = torch.tensor([5, 17, 42, 99])
    s, t = _unit(4, 16, seed=8), _unit(4, 16, seed=9)
    state = copy.deepcopy(mem.state_dict())
    neg = mem.sample_negatives(idx)
    mem.load_state_dict(state)  # rewinds the sampler RNG (saved in _extra_state)
    loss = mem(s, t, idx, targets[idx])

    contrast = torch.cat([idx.unsqueeze(1), neg], 1)
    out_s = crd_scores(s, mem.memory_t[contrast])
    out_t = crd_scores(t, mem.memory_s[contrast])
    z_s, z_t = out_s.mean() * 200, out_t.mean() * 200
    expected = crd_nce(out_s / z_s, 200) + crd_nce(out_t / z_t, 200)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert mem.z_s.item() == pytest.approx(z_s.item(), rel=1e-6)
    assert mem.z_t.item() == pytest.approx(z_t.item(), rel=1e-6)

    z_before = (mem.z_s.clone(), mem.z_t.clone())
    mem(_unit(4, 16, seed=10) * 1.0, _unit(4, 16, seed=11), idx + 1, targets[idx + 1])
    assert torch.equal(mem.z_s, z_before[0]) and torch.equal(mem.z_t, z_before[1])
    assert "z_s" in mem.state_dict() and "_extra_state" in mem.state_dict()


def test_bank_update_momentum_and_normalisation():
    mem, targets = _bank(seed=12)
    mem.train()
    idx = torch.tensor([3, 8, 150])
    s, t = _unit(3, 16, seed=13), _unit(3, 16, seed=14)
    old_s, old_t = mem.memory_s.clone(), mem.memory_t.clone()
    mem(s, t, idx, targets[idx])
    torch.testing.assert_close(mem.memory_s[idx], F.normalize(0.5 * old_s[idx] + 0.5 * s, dim=1))
    torch.testing.assert_close(mem.memory_t[idx], F.normalize(0.5 * old_t[idx] + 0.5 * t, dim=1))
    torch.testing.assert_close(mem.memory_s[idx].norm(dim=1), torch.ones(3))
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(mem.memory_s[rest], old_s[rest]) and torch.equal(mem.memory_t[rest], old_t[rest])
    mem.eval()
    frozen = mem.memory_s.clone()
    mem(s, t, idx, targets[idx])
    assert torch.equal(mem.memory_s, frozen)


def test_bank_score_routes_agree():
    for n in (40, 1000):  # 40 < (K+1)*D -> matmul route; 1000 -> gather route
        mem, _ = _bank(n=n, k=8, dim=16)
        anchor = _unit(5, 16, seed=15)
        contrast = torch.randint(0, n, (5, 9), generator=torch.Generator().manual_seed(16))
        torch.testing.assert_close(
            mem._bank_scores(anchor, mem.memory_t, contrast), crd_scores(anchor, mem.memory_t[contrast])
        )


@pytest.mark.parametrize("n", [200, 2000])  # matmul route, gather route
def test_bank_gradients_reach_anchors_not_memory_and_is_deterministic(n):
    losses = []
    for _ in range(2):
        mem, targets = _bank(n=n, seed=21)
        s, t = _unit(6, 16, seed=17).requires_grad_(), _unit(6, 16, seed=18).requires_grad_()
        idx = torch.tensor([1, 2, 30, 31, 90, 199])
        loss = mem(s, t, idx, targets[idx])
        loss.backward()
        assert torch.isfinite(loss)
        assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
        assert all(not b.requires_grad and b.grad is None for b in mem.buffers())
        loss2 = mem(s.detach(), t.detach(), idx, targets[idx])
        losses.append((loss.item(), loss2.item()))
    assert losses[0] == losses[1]


def test_bank_user_errors():
    with pytest.raises(KdlabError, match="targets are required"):
        CRDMemory(n_data=10, feature_dim=4, num_negatives=2)
    with pytest.raises(KdlabError, match="one class"):
        CRDMemory(n_data=10, feature_dim=4, num_negatives=2, targets=torch.zeros(10, dtype=torch.long))
    with pytest.raises(KdlabError, match="targets for n_data"):
        CRDMemory(n_data=10, feature_dim=4, num_negatives=2, targets=torch.arange(9))
    mem, targets = _bank()
    with pytest.raises(KdlabError, match="feature_dim"):
        mem(_unit(2, 8), _unit(2, 8), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(KdlabError, match="indices must lie"):
        mem(_unit(2, 16), _unit(2, 16), torch.tensor([0, 500]), torch.tensor([0, 1]))


# -------------------------------------------------------------------------------------------- queue


def test_queue_memory_size_independent_of_n_data():
    small = CRDMemory(n_data=1_000, feature_dim=16, num_negatives=64, mode="queue")
    big = CRDMemory(n_data=100_000, feature_dim=16, num_negatives=64, mode="queue")
    assert _memory_numel(small) == _memory_numel(big)
    assert small.queue_s.shape == (64, 16)
    assert CRDMemory(n_data=10, feature_dim=16, mode="queue", queue_size=32).queue_t.shape == (32, 16)
    s, t = _unit(8, 16, seed=19).requires_grad_(), _unit(8, 16, seed=20).requires_grad_()
    loss = big(s, t, torch.arange(8), torch.arange(8) % 3)
    loss.backward()
    assert torch.isfinite(loss) and s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in big.buffers())


def test_queue_fifo_and_same_class_entries_excluded():
    mem = CRDMemory(n_data=1000, feature_dim=8, num_negatives=6, mode="queue")
    mem.train()
    for step in range(3):  # 3 batches of 4 into a queue of 6: wraps around
        mem(
            _unit(4, 8, seed=30 + step),
            _unit(4, 8, seed=40 + step),
            torch.arange(4),
            torch.tensor([0, 1, 2, 3]),
        )
    assert mem.queue_ptr.item() == 0
    # step 0 fills slots 0-3, step 1 writes slots 4, 5, 0, 1, step 2 writes slots 2-5
    assert mem.queue_labels.tolist() == [2, 3, 0, 1, 2, 3]
    torch.testing.assert_close(mem.queue_s[2:], _unit(4, 8, seed=32))
    torch.testing.assert_close(mem.queue_t[:2], _unit(4, 8, seed=41)[2:])

    mem.eval()
    s, t = _unit(2, 8, seed=50), _unit(2, 8, seed=51)
    y = torch.tensor([2, 2])
    base = mem(s, t, torch.arange(2), y).item()
    # reference: NCE over other-class queue entries only, positive = the other network's own embedding
    keep = mem.queue_labels != 2
    pos_s, pos_t = (s * t).sum(1, keepdim=True), (t * s).sum(1, keepdim=True)
    out_s = torch.exp(torch.cat([pos_s, s @ mem.queue_t[keep].t()], 1) / 0.07) / mem.z_s
    out_t = torch.exp(torch.cat([pos_t, t @ mem.queue_s[keep].t()], 1) / 0.07) / mem.z_t
    expected = crd_nce(out_s, 1000) + crd_nce(out_t, 1000)
    assert base == pytest.approx(expected.item(), rel=1e-5)

    changed = copy.deepcopy(mem)
    same = torch.nonzero(~keep).flatten()
    changed.queue_t[same] = -changed.queue_t[same]
    changed.queue_s[same] = -changed.queue_s[same]
    assert changed(s, t, torch.arange(2), y).item() == pytest.approx(base, rel=1e-6)
    other = torch.nonzero(keep).flatten()[:1]
    changed.queue_t[other] = -changed.queue_t[other]
    assert changed(s, t, torch.arange(2), y).item() != pytest.approx(base, rel=1e-6)
