"""Metrics: `<output_dir>/metrics.jsonl` always; SwanLab and TensorBoard when enabled.

One JSON object per step, flushed and fsynced as it is written, so a killed run loses at most the
step in flight. On resume the file is cut back to the resumed step (atomically), so a resumed run
produces the same file as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from mindrl.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    """JSON-safe scalars: tensors to floats, NaN/inf to None (JSON has no NaN)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    def __init__(self, output_dir: str | os.PathLike, *, resume_step: int = 0, use_tensorboard: bool = False,
                 use_swanlab: bool = False, project: str = "mindrl", experiment: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "completion_samples.jsonl"
        for path in (self.path, self.samples_path):
            self._truncate_after(path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        self._swanlab = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                log.warning("use_tensorboard: tensorboard is not installed (pip install -e '.[tracking]')")
        if use_swanlab:
            try:
                import swanlab

                # "local" keeps everything under output_dir and needs no network or account.
                mode = os.environ.get("SWANLAB_MODE", "local")
                self._swanlab = swanlab.init(project=project, experiment_name=experiment or self.dir.name,
                                             config=config or {}, mode=mode, logdir=str(self.dir / "swanlog"))
            except ImportError:
                log.warning("use_swanlab: swanlab is not installed (pip install -e '.[tracking]')")

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line + "\n")
            except json.JSONDecodeError:
                break  # a torn last line from a killed run
        atomic_write_text(path, "".join(kept))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
        if self._swanlab is not None:
            import swanlab

            swanlab.log(numeric, step=step)

    def log_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """A few prompts, completions and rewards, for reading what the model does."""
        with open(self.samples_path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in row.items()}}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._swanlab is not None:
            import swanlab

            swanlab.finish()


def read_metrics(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {output_dir} a training output directory?")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
