"""DAPO overlong filtering and soft overlong punishment."""
from __future__ import annotations

import pytest
import torch

from mindrl.algorithms import agg_loss, overlong_filter_mask, soft_overlong_penalty, truncated_from_finish_reasons


def test_soft_penalty_hand_values():
    # L_max 20, buffer 4: 0 up to 16, linear to -1 at 20, -1 beyond
    out = soft_overlong_penalty([10, 16, 17, 18, 20, 25], max_response_length=20, overlong_buffer_len=4)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    half = soft_overlong_penalty(torch.tensor([17, 20]), 20, 4, overlong_penalty_factor=0.5)
    torch.testing.assert_close(half, torch.tensor([-0.125, -0.5]))
    assert (soft_overlong_penalty(torch.arange(0, 40), 20, 4) <= 0).all()


def test_soft_penalty_bad_buffer():
    with pytest.raises(ValueError):
        soft_overlong_penalty([1], 20, 0)
    with pytest.raises(ValueError):
        soft_overlong_penalty([1], 20, 21)


def test_filter_mask_from_flags_and_finish_reasons():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(overlong_filter_mask(mask, torch.tensor([False, True, False])), expected)
    torch.testing.assert_close(overlong_filter_mask(mask, ["stop", "length", None]), expected)
    bool_out = overlong_filter_mask(mask.bool(), [False, True, False])
    assert bool_out.dtype == torch.bool and bool_out.tolist() == expected.bool().tolist()
    assert truncated_from_finish_reasons(["length", "stop", "abort"]).tolist() == [True, False, False]
    with pytest.raises(ValueError):
        overlong_filter_mask(mask, [True, False])


def test_filtered_rows_leave_the_loss():
    loss = torch.tensor([[1.0, 3.0], [100.0, 100.0]])
    mask = overlong_filter_mask(torch.ones(2, 2), ["stop", "length"])
    for mode in ("token-mean", "seq-mean-token-mean"):
        torch.testing.assert_close(agg_loss(loss, mask, mode), torch.tensor(2.0))
