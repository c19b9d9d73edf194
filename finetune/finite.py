"""NaN/inf checks for weights, and the divergence check on the logged loss.

A diverged run must never look like a success: the Trainer's default logging turns a NaN loss into 0, and a
model whose every tensor is NaN saves, exports and "chats" (with empty replies) without complaint.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch


class DivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient norm or weights; one line naming the step, the value
    and the last checkpoint saved with finite weights."""


def nonfinite_kind(tensor: torch.Tensor) -> str | None:
    """ "NaN" or "inf" when the tensor holds one, else None. `aminmax` propagates NaN and exposes ±inf in one
    pass without a temporary the size of the tensor (30x faster than `isfinite(t).all()` on CPU)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    low, high = torch.aminmax(tensor.detach())
    if torch.isnan(low) or torch.isnan(high):
        return "NaN"
    if torch.isinf(low) or torch.isinf(high):
        return "inf"
    return None


def first_nonfinite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, str] | None:
    """(name, "NaN" | "inf") of the first tensor holding a non-finite value, else None."""
    for name, tensor in named_tensors:
        kind = nonfinite_kind(tensor)
        if kind is not None:
            return name, kind
    return None


def local_parameters(model: torch.nn.Module, trainable_only: bool) -> Iterable[tuple[str, torch.Tensor]]:
    """The parameter values this rank holds: its ZeRO-3 partition (`ds_tensor`) where the weights are
    partitioned, the full tensor elsewhere."""
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        yield name, getattr(p, "ds_tensor", p)


class DivergenceMonitor:
    """Warns (returns a message) when training looks diverged while its values are still finite:

    - the logged loss stays above `factor` x the median of its healthy history for `patience` logs in a row
      (values seen during such an episode are kept out of the history, so the baseline does not chase them);
    - the gradient norm is exactly 0 for `patience` logs: nothing learns any more (what a blown-up network
      with dead units looks like after a learning rate far too high).

    Each condition warns once per episode."""

    def __init__(self, factor: float = 2.0, patience: int = 3, window: int = 50):
        self.factor, self.patience, self.window = factor, patience, window
        self._history: list[float] = []
        self._high = 0
        self._zero_grad = 0

    def update(self, step: int, loss: float | None, grad_norm: float | None) -> list[str]:
        warnings = []
        if loss is not None:
            baseline = statistics.median(self._history) if self._history else None
            if baseline is not None and baseline > 0 and loss > self.factor * baseline:
                self._high += 1
                if self._high == self.patience:
                    warnings.append(
                        f"step {step}: the loss has been above {self.factor:g}x its running median "
                        f"({baseline:.4g}) for {self.patience} logged steps (now {loss:.4g}): training is "
                        "diverging; lower --learning_rate (or raise --warmup_ratio) and resume from an "
                        "earlier checkpoint"
                    )
            else:
                self._high = 0
                self._history = (self._history + [loss])[-self.window :]
        if grad_norm is not None:
            self._zero_grad = self._zero_grad + 1 if grad_norm == 0 else 0
            if self._zero_grad == self.patience:
                warnings.append(
                    f"step {step}: the gradient norm has been 0 for {self.patience} logged steps: nothing is "
                    "learning any more (a learning rate far too high kills a network this way)"
                )
        return warnings
