"""DAPO overlong filtering (the soft overlong punishment is the `overlong` scorer, tests/rewards)."""
from __future__ import annotations

import pytest
import torch

from mindrl.algorithms import agg_loss, overlong_filter_mask, truncated_from_finish_reasons


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
