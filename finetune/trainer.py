"""HF Trainer that adds throughput to every training log: tokens/s, supervised tokens/s and, on a GPU, MFU.

The loss itself is untouched: the model divides its summed cross-entropy by `num_items_in_batch`, which the
Trainer counts over the whole accumulated batch and (with `average_tokens_across_devices`) over all ranks, so
the loss is the token mean of the global batch whatever the split into micro-batches and ranks.
"""

from __future__ import annotations

import math
import time

import torch
from transformers import Trainer

from .adapter_files import finish_adapter_dir
from .data.constants import IGNORE_INDEX
from .outputs import complete_model_dir, local_model_dir


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts, also for ZeRO-3 partitioned and 4-bit packed parameters."""
    total = trainable = 0
    for p in model.parameters():
        if hasattr(p, "ds_numel"):
            n = p.ds_numel
        elif getattr(p, "quant_state", None) is not None:
            n = math.prod(p.quant_state.shape)
        else:
            n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return total, trainable


def training_flops_per_token(model: torch.nn.Module) -> float:
    """Model FLOPs per trained token: 2 per weight forward, 2 more for activation gradients, and 2 more for
    weight gradients when the base itself trains (so 6N full, 4N with a frozen base under LoRA). Embedding
    lookups cost nothing; attention scores are left out (packed rows attend only within their own sample)."""
    total, trainable = count_parameters(model)
    embedding = model.get_input_embeddings().weight
    n_embedding = getattr(embedding, "ds_numel", embedding.numel())
    dense = total - n_embedding
    base_trains = trainable > dense / 2
    return (6 if base_trains else 4) * dense


class SFTTrainer(Trainer):
    """`base_model_dir`: full-model saves (final and checkpoints) are completed into drop-in replacements for it.
    `flops_per_token` and `peak_flops` (per device): MFU is logged when both are known."""

    def __init__(
        self,
        *args,
        base_model_dir: str | None = None,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._base_model_dir = (
            local_model_dir(base_model_dir, self.args.cache_dir) if base_model_dir else None
        )
        self._flops_per_token = flops_per_token
        self._peak_flops = peak_flops
        # [tokens, supervised tokens] on this rank since the last training log.
        self._tokens = torch.zeros(2, dtype=torch.float64)
        self._last_log_time: float | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._last_log_time is None:
            self._last_log_time = time.perf_counter()
        self._tokens += torch.tensor(batch_token_counts(inputs), dtype=torch.float64)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._last_log_time is not None:
            logs.update(self._throughput())
        if "eval_loss" in logs:
            # Capped so that a diverged run logs a huge number rather than overflowing.
            logs["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50.0)), 4)
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        if hasattr(self.model, "peft_config"):
            # Readable by the peft of the official stack, and tied to the base it was trained on.
            finish_adapter_dir(output_dir, self._base_model_dir)
        elif self._base_model_dir is not None:
            complete_model_dir(output_dir, self._base_model_dir)

    def _throughput(self) -> dict[str, float]:
        """Rates over all ranks since the last log; every rank logs at the same step, so the reduce matches."""
        now = time.perf_counter()
        elapsed = max(now - self._last_log_time, 1e-9)
        tokens, supervised = self.accelerator.reduce(
            self._tokens.to(self.args.device), reduction="sum"
        ).tolist()
        self._tokens.zero_()
        self._last_log_time = now
        rates = {"tokens_per_second": tokens / elapsed, "supervised_tokens_per_second": supervised / elapsed}
        if self._flops_per_token and self._peak_flops:
            achieved = rates["tokens_per_second"] * self._flops_per_token
            rates["mfu"] = achieved / (self._peak_flops * self.args.world_size)
        return {k: round(v, 4) for k, v in rates.items()}


def batch_token_counts(inputs: dict) -> tuple[int, int]:
    """(real tokens, supervised tokens) in one micro-batch. Supervised counts the labels the shifted loss
    uses (all but each row's first), as the Trainer does for `num_items_in_batch`."""
    labels = inputs["labels"]
    supervised = int((labels[..., 1:] != IGNORE_INDEX).sum())
    mask = inputs.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None and mask.dim() == 2 else labels.numel()
    return tokens, supervised
