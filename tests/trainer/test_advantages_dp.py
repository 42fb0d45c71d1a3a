"""Batch-whitened advantages (REINFORCE++) are global over data-parallel ranks: two gloo ranks holding
half the batch each give exactly the advantages of one rank holding it all (advantages_dp_worker.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("advantages_dp_worker.py")
pytestmark = pytest.mark.megatron


def test_dp2_advantages_equal_dp1(tmp_path):
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    one = torch.load(tmp_path / "dp1_rank0.pt")
    halves = [torch.load(tmp_path / f"dp2_rank{r}.pt") for r in range(2)]
    for key, (whole, _) in one.items():
        split = torch.cat([h[key][0] for h in halves])
        torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-6, msg=key)
        assert whole.abs().max() > 0.1, key  # not vacuous: the rows learn something
        # per-rank whitening (the statistics of half the batch) would have given other advantages
        local = torch.cat([h[key][1] for h in halves])
        if key.startswith("reinforce_plus_plus"):
            assert (local - whole).abs().max() > 1e-2, key
        else:  # group estimators: a rank's groups are whole, so nothing changes
            torch.testing.assert_close(local, whole, msg=key)
