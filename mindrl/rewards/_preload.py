"""Imported once by the forkserver (and by each worker): heavy imports and a math-verify warm-up happen
before any worker forks, so a replacement worker is ready in milliseconds and no first item pays ~1 s."""
import mindrl.rewards.registry  # noqa: F401  (imports every scorer module)
from mindrl.rewards.math_acc import warmup

try:
    warmup()
except Exception:  # noqa: BLE001 - a failed warm-up only costs time; never break the forkserver
    pass
