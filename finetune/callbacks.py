"""Trainer callbacks: the loss-curve PNG in the output directory."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback

from .exits import first_line

LOSS_CURVE = "loss_curve.png"

logger = logging.getLogger(__name__)


def plot_loss_curve(log_history: list[dict], path: str | Path) -> bool:
    """Training (and evaluation) loss against optimizer step; False when nothing was logged yet."""
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display on training hosts
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        for points, label, style in ((train, "train", "-"), (evals, "eval", "o--")):
            if points:
                steps, losses = zip(*points)
                ax.plot(steps, losses, style, label=label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (token mean)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return True


class LossCurveCallback(TrainerCallback):
    """Redraw output_dir/loss_curve.png at every checkpoint and at the end, on the main process only.
    A picture is never worth a run: any failure to draw or write it (a full disk) is a warning."""

    def _draw(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / LOSS_CURVE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            plot_loss_curve(state.log_history, path)
        except Exception as e:  # matplotlib, the file system: whatever fails, training goes on
            detail = first_line(e)
            logger.warning("loss curve not written to %s: %s", path, detail)

    def on_save(self, args, state, control, **kwargs):
        self._draw(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._draw(args, state)
