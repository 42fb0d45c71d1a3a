"""loss_agg_mode aggregation: hand values, masking, empty masks, and the global normaliser."""
from __future__ import annotations

import pytest
import torch

from mindrl.algorithms import LOSS_AGGREGATIONS, agg_loss, loss_normaliser, masked_mean

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])  # third row fully masked (e.g. overlong-filtered)

HAND = {
    "token-mean": (1 + 2 + 5 + 6 + 7 + 8) / 6,
    "seq-mean-token-mean": (1.5 + 6.5) / 2,  # the empty row is not a sequence
    "seq-mean-token-sum": (3 + 26) / 2,
    "seq-mean-token-sum-norm": (3 / 4 + 26 / 4) / 2,  # L defaults to the padded width, 4
}


@pytest.mark.parametrize("mode", sorted(HAND))
def test_hand_values(mode):
    torch.testing.assert_close(agg_loss(LOSS, MASK, mode), torch.tensor(HAND[mode]))


def test_sum_norm_uses_constant_max_length():
    out = agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", max_response_length=8)
    torch.testing.assert_close(out, torch.tensor((3 + 26) / 8 / 2))


@pytest.mark.parametrize("mode", sorted(HAND))
def test_garbage_under_the_mask_does_not_leak(mode):
    dirty = LOSS.clone()
    dirty[0, 3] = float("inf")
    dirty[2] = float("nan")
    torch.testing.assert_close(agg_loss(dirty, MASK, mode), torch.tensor(HAND[mode]))


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_empty_mask_gives_zero_and_zero_grad(mode):
    loss = LOSS.clone().requires_grad_(True)
    out = agg_loss(loss, torch.zeros_like(MASK), mode)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(loss.grad, torch.zeros_like(loss))
    assert agg_loss(loss, torch.zeros_like(MASK), mode, global_normaliser=0).item() == 0.0


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_bf16_input_fp32_output(mode):
    out = agg_loss(LOSS.bfloat16(), MASK, mode)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor(HAND[mode]))


@pytest.mark.parametrize("mode", sorted(LOSS_AGGREGATIONS))
def test_global_normaliser_makes_micro_batches_sum_to_the_full_batch(mode):
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 5, generator=g)
    lengths = [5, 1, 3, 0, 2, 4]  # unequal lengths, one empty row
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    full = agg_loss(loss, mask, mode)
    micro = [(loss[:2], mask[:2]), (loss[2:3], mask[2:3]), (loss[3:], mask[3:])]
    total = sum(loss_normaliser(m, mode) for _, m in micro)  # the all-reduce over micro-batches / DP ranks
    summed = sum(agg_loss(lm, m, mode, global_normaliser=total) for lm, m in micro)
    torch.testing.assert_close(summed, full)
    # ...and the naive mean of local means is different on this data, so the test can tell them apart
    naive = sum(agg_loss(lm, m, mode) for lm, m in micro) / len(micro)
    assert not torch.allclose(naive, full)


def test_loss_normaliser_counts():
    assert loss_normaliser(MASK, "token-mean").item() == 6
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert loss_normaliser(MASK, mode).item() == 2


def test_masked_mean_dims():
    torch.testing.assert_close(masked_mean(LOSS, MASK, dim=-1), torch.tensor([1.5, 6.5, 0.0]))
    torch.testing.assert_close(masked_mean(LOSS, MASK), torch.tensor(29 / 6))


def test_errors():
    with pytest.raises(ValueError) as err:
        agg_loss(LOSS, MASK, "token_mean")
    assert "seq-mean-token-sum-norm" in str(err.value)
    with pytest.raises(ValueError, match="differ"):
        agg_loss(LOSS, MASK[:, :2], "token-mean")
    with pytest.raises(ValueError):
        loss_normaliser(MASK, "nope")
