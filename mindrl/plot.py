"""Draw training curves: `python -m mindrl.plot OUTPUT_DIR [--out curves.png] [--smooth 10]`.

Reads `<OUTPUT_DIR>/metrics.jsonl` and draws reward (with each scorer's part), accuracy, response
length and KL against the step, raw and smoothed, into one PNG.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = [
    ("reward", lambda k: k == "reward/mean" or (k.startswith("reward/") and k.endswith("/mean"))),
    ("accuracy", lambda k: k in ("accuracy", "acc/mean")),
    ("response length", lambda k: k in ("response_length/mean", "response_length/max")),
    ("KL", lambda k: k in ("kl", "actor/kl", "kl/mean")),
]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total, queue = [], 0.0, []
    for v in values:
        queue.append(v)
        total += v
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def plot(output_dir: str | Path, out: str | Path | None = None, smooth: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    from mindrl.trainer.tracking import read_metrics

    rows = read_metrics(output_dir)
    if not rows:
        raise ValueError(f"{output_dir}/metrics.jsonl has no steps yet")
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (title, wanted) in zip(axes.flat, PANELS):
        drawn = False
        for key in (k for k in keys if wanted(k)):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            steps, values = zip(*pts)
            line, = ax.plot(steps, values, alpha=0.3, linewidth=1)
            ax.plot(steps, moving_average(list(values), smooth), color=line.get_color(), label=key, linewidth=2)
            drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.suptitle(f"{Path(output_dir).name}: {len(rows)} steps (smoothed over {smooth})")
    out = Path(out) if out else Path(output_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="a training output directory (has metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: OUTPUT_DIR/curves.png)")
    p.add_argument("--smooth", type=int, default=10, help="moving-average window in steps (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        print(plot(args.output_dir, args.out, args.smooth))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
