"""Draw training curves: `python -m mindrl.plot OUTPUT_DIR [--out curves.png] [--smooth 10]`.

Reads `<OUTPUT_DIR>/metrics.jsonl` and draws task accuracy (the large top panel: whether the
policy learned the task, not just the format), then reward (with each scorer's part, format
included), response length and KL against the step, raw and smoothed, into one PNG. When
`OUTPUT_DIR/eval/warm_start/summary.json` exists (the tiny demo evaluates its warm start there),
the warm start's accuracy is drawn as the starting line, and `eval/trained` as the end point.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ACCURACY_PANEL = ("task accuracy (the task scorer, not format)", lambda k: k == "accuracy")
PANELS = [
    ("reward (format and each scorer)", lambda k: k == "reward/mean" or (k.startswith("reward/") and k.endswith("/mean"))),
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
    fig = plt.figure(figsize=(12, 8), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.4, 1])
    top = fig.add_subplot(grid[0, :])
    _draw(top, rows, keys, ACCURACY_PANEL, smooth, linewidth=3)
    top.set_ylim(-0.02, 1.02)
    _draw_evals(top, output_dir, rows[-1]["step"])
    acc = [r["accuracy"] for r in rows if isinstance(r.get("accuracy"), (int, float))]
    if len(acc) >= 2 * smooth:
        first, last = sum(acc[:smooth]) / smooth, sum(acc[-smooth:]) / smooth
        top.set_title(f"{ACCURACY_PANEL[0]}: first {smooth} steps {first:.2f} -> last {smooth} steps {last:.2f} "
                      f"({last - first:+.2f})")
    top.title.set_fontsize(14)
    for i, panel in enumerate(PANELS):
        _draw(fig.add_subplot(grid[1, i]), rows, keys, panel, smooth)
    fig.suptitle(f"{Path(output_dir).name}: {len(rows)} steps (smoothed over {smooth})")
    out = Path(out) if out else Path(output_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _draw(ax, rows: list[dict], keys: list[str], panel, smooth: int, linewidth: float = 2) -> None:
    title, wanted = panel
    drawn = False
    for key in (k for k in keys if wanted(k)):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if not pts:
            continue
        steps, values = zip(*pts)
        line, = ax.plot(steps, values, alpha=0.3, linewidth=1)
        ax.plot(steps, moving_average(list(values), smooth), color=line.get_color(), label=key, linewidth=linewidth)
        drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")


def _draw_evals(ax, output_dir: str | Path, last_step: int) -> None:
    """The warm start's accuracy (before GRPO) as a dashed line; the trained model's as a point."""
    from mindrl.cli.summarize import read_evals

    evals = read_evals(output_dir)
    if "warm_start" in evals:
        ax.axhline(evals["warm_start"]["accuracy"], color="gray", linestyle="--", linewidth=1.5,
                   label=f"warm start (eval): {evals['warm_start']['accuracy']:.2f}")
    if "trained" in evals:
        ax.plot([last_step], [evals["trained"]["accuracy"]], marker="*", markersize=14, color="black", linestyle="",
                label=f"trained (eval): {evals['trained']['accuracy']:.2f}")
    if evals:
        ax.legend(fontsize=9)


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
