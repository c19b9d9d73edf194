"""HF Trainer that adds throughput to every training log (tokens/s, supervised tokens/s and, on a GPU, MFU)
and makes a run unable to lie or lose work:

- a non-finite loss or gradient norm stops training within its step on every rank (`DivergedError`), after
  logging it as NaN, and no checkpoint or final model is written from non-finite weights;
- a stop request (SIGTERM/SIGINT, `preemption.StopRequest`) ends training after the current step with a
  complete checkpoint (`preempted_at`);
- checkpoints and the final model are written under staging names and renamed once every rank has written
  them (`checkpoints`); a failed write is a `SaveError` naming the path, and leaves nothing behind.

The loss itself is untouched: the model divides its summed cross-entropy by `num_items_in_batch`, which the
Trainer counts over the whole accumulated batch and (with `average_tokens_across_devices`) over all ranks, so
the loss is the token mean of the global batch whatever the split into micro-batches and ranks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints

from .adapter_files import finish_adapter_dir
from .checkpoints import SaveError, free_space, promote, staging_path, sync_tree
from .data.constants import IGNORE_INDEX
from .exits import first_line
from .finite import DivergedError, DivergenceMonitor, first_nonfinite, local_parameters
from .outputs import complete_model_dir, local_model_dir
from .preemption import StopRequest

logger = logging.getLogger(__name__)

# How a write that did not complete surfaces: torch.save's stream writer, safetensors' IoError, errno 28.
SHORT_WRITE = ("unexpected pos", "file write failed", "StorageFull", "os error 28", "No space left")


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
        stop_request: StopRequest | None = None,
        last_checkpoint: str | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._stop_request = stop_request
        # The newest checkpoint with finite weights: the resumed one, then each one this run saves.
        self.last_checkpoint = last_checkpoint
        self.preempted_at: int | None = None  # the step a stop request ended training at
        self._saved_step: int | None = None
        self._bad_loss: torch.Tensor | None = None  # on the device: no host sync per micro-batch
        self._divergence = DivergenceMonitor()
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
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Kept apart from the logged loss, which --logging_nan_inf_filter may clean.
        bad = ~torch.isfinite(loss.detach())
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._last_log_time is not None:
            logs.update(self._throughput())
        if "eval_loss" in logs:
            # Capped so that a diverged run logs a huge number rather than overflowing.
            logs["eval_perplexity"] = round(math.exp(min(logs["eval_loss"], 50.0)), 4)
        super().log(logs, start_time)
        if "loss" in logs and self.is_world_process_zero():
            for warning in self._divergence.update(
                self.state.global_step, logs["loss"], logs.get("grad_norm")
            ):
                logger.warning("%s", warning)

    # ---------------------------------------------------------------- every optimizer step

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, epoch, *args, **kwargs):
        """Runs on every rank after every optimizer step (and at each epoch's end): the ranks agree on a
        non-finite loss or gradient norm and on a stop request, then log, evaluate and save as usual."""
        bad_loss, bad_grad, stop = self._agree_on_step(grad_norm)
        if bad_loss or bad_grad:
            # Log the step (NaN as NaN) but evaluate and save nothing from these weights.
            self.control.should_log, self.control.should_evaluate, self.control.should_save = (
                True,
                False,
                False,
            )
            super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, *args, **kwargs)
            raise DivergedError(self._diverged_message(grad_norm, "loss" if bad_loss else "gradient norm"))
        if stop and self.preempted_at is None:
            self.preempted_at = self.state.global_step
            self.control.should_save, self.control.should_training_stop = True, True
            self.control.should_evaluate = False  # an eval could outlast the scheduler's grace period
        if self._saved_step == self.state.global_step:
            self.control.should_save = False  # the epoch-end call after a step that just saved
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, epoch, *args, **kwargs)

    def _agree_on_step(self, grad_norm) -> tuple[bool, bool, bool]:
        """(non-finite loss, non-finite gradient norm, stop requested) on any rank: one all-reduce of three
        numbers, and the step's only host sync beyond the Trainer's own. An fp16 overflow that the loss scaler
        skipped is not a divergence."""
        stop = self._stop_request is not None and self._stop_request.requested
        flags = torch.tensor([0.0, 0.0, float(stop)], device=self.args.device)
        if self._bad_loss is not None:
            flags[0] = self._bad_loss.to(flags.device, flags.dtype)
            self._bad_loss = None
        if grad_norm is not None and not self.accelerator.optimizer_step_was_skipped:
            norm = torch.as_tensor(grad_norm, dtype=torch.float32).to(flags.device)
            flags[1] = (~torch.isfinite(norm)).to(flags.dtype)
        return tuple(v > 0 for v in self.accelerator.reduce(flags, reduction="sum").tolist())

    def _diverged_message(self, grad_norm, what: str) -> str:
        logged = next((row for row in reversed(self.state.log_history) if "loss" in row), {})
        loss = logged.get("loss", float("nan")) if logged.get("step") == self.state.global_step else "nan"
        return (
            f"step {self.state.global_step}: the {what} is not finite (loss {loss}, grad_norm "
            f"{float(grad_norm) if grad_norm is not None else 'n/a'}): training diverged and stopped, nothing "
            f"from this step was saved; {self._last_good()}; lower --learning_rate (or set --max_grad_norm 1.0)"
        )

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was saved before it"
        return (
            f"last good checkpoint: {self.last_checkpoint} (--resume_from_checkpoint {self.last_checkpoint})"
        )

    def _require_finite_weights(self, what: str) -> None:
        """Every rank checks the trainable weights it holds (its ZeRO-3 partition); any non-finite one stops the
        save. Collective: call on every rank."""
        found = first_nonfinite(local_parameters(self.model, trainable_only=True))
        flag = torch.tensor([0.0 if found is None else 1.0], device=self.args.device)
        if self.accelerator.reduce(flag, reduction="sum").item() == 0:
            return
        where = f"tensor {found[0]} holds {found[1]}" if found else "a tensor on another rank is not finite"
        raise DivergedError(
            f"step {self.state.global_step}: {where}: the weights diverged, {what} was not written; "
            f"{self._last_good()}; lower --learning_rate (or set --max_grad_norm 1.0)"
        )

    # ---------------------------------------------------------------- saving

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer._save_checkpoint (transformers 5.24), written into a staging directory that is renamed to
        checkpoint-N once every rank has written its part: a kill or a full disk mid-save leaves no
        checkpoint-N that a resume would pick."""
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._require_finite_weights(final.name)
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        if self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST):
            best_step = self.state.best_global_step
            best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best_step}"
            if best_step and (best_step == self.state.global_step or best.exists()):
                self.state.best_model_checkpoint = str(best)
        staging = staging_path(final)
        with self._staged(staging, f"checkpoint {final}"):
            self.save_model(str(staging), _internal_call=True)
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(str(staging))
                self._save_scaler(str(staging))
                self._save_rng_state(str(staging))
            if self.args.should_save:
                exportable = [
                    cb
                    for cb in [*self.callback_handler.callbacks, self.control]
                    if isinstance(cb, ExportableState)
                ]
                for cb in exportable:
                    name, cb_state = cb.__class__.__name__, cb.state()
                    if isinstance(self.state.stateful_callbacks[name], list):
                        self.state.stateful_callbacks[name].append(cb_state)
                    else:
                        self.state.stateful_callbacks[name] = cb_state
                self.state.save_to_json(str(staging / TRAINER_STATE_NAME))
            self.accelerator.wait_for_everyone()  # every rank's files are written
            if self.args.should_save:
                promote(staging, final)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint, self._saved_step = str(final), self.state.global_step
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(final))
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def save_final(self) -> None:
        """The trained model (or adapter) into output_dir, then trainer_state.json, which marks a finished run:
        written into a staging directory first and moved in only when complete. Collective."""
        self._require_finite_weights("the final model")
        output_dir = Path(self.args.output_dir)
        staging = output_dir / ".staging-final"
        with self._staged(staging, f"the final model into {output_dir}"):
            self.save_model(str(staging))
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                sync_tree(staging)
                for entry in sorted(staging.iterdir()):
                    target = output_dir / entry.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    os.replace(entry, target)
                staging.rmdir()
                self.save_state()
        self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def _staged(self, staging: Path, what: str):
        """Around a save into `staging`: clear what an interrupted attempt left there first; on any failure
        remove it, and turn a write error (disk full, I/O) into one `SaveError` line naming `what`."""
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            yield
        except BaseException as error:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            if not isinstance(error, Exception) or isinstance(error, DivergedError):
                raise
            detail = first_line(error)
            if any(sign in detail for sign in SHORT_WRITE) and "No space left" not in detail:
                detail += " (a write was cut short: the disk is probably full)"
            raise SaveError(
                f"saving {what} failed: {detail} (free space there: {free_space(staging)}); nothing of this save "
                f"was kept; {self._last_good()}"
            ) from error

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
