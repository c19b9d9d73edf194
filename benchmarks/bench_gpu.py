"""GPU benchmark: Baichuan2-7B-shaped training throughput, MFU and memory on one GPU. Figures, never assertions.

    python -m benchmarks.bench_gpu [--seq_len 4096] [--warmup 2] [--steps 5] [--no_compile]
    python -m benchmarks.bench --gpu            (the same, after the CPU tables)

What is measured (random weights, no checkpoint files; bf16 weights and activations; sdpa attention):
- full: forward + backward of every weight, no optimizer step (bf16 AdamW state for 7.5B parameters would
  not fit one 80 GB GPU beside the activations; the step is memory-bound and small beside fwd+bwd).
  Activation checkpointing stays off unless that runs out of memory; the table says how much was needed.
- LoRA on W_pack (the official target) at r=16 and at the official r=1: forward + backward, base frozen.
- One row of `seq_len` random tokens per step, every label trained (labels = input_ids), so the model's
  supervised-only head computes logits at all positions: the worst case for our head, the usual case for MFU.
- MFU = tokens/s x FLOPs per token / the device's dense bf16 peak, with FLOPs per token 6N + 12*L*d*S for full
  and 4N + 12*L*d*S for LoRA (N = parameters outside the input embedding, whose lookup costs no FLOPs).
- Then the same runs with every decoder layer compiled in place (regional compilation: one graph that all
  layers share, as `sft.py --torch_compile True` does), fusing RMSNorm, RoPE, SwiGLU and the residuals;
  `--no_compile` skips them.
- Logits/loss path memory: the model's own head + loss (forward + backward, a zero-layer model fed hidden
  states, frozen weights) against the naive full-logits path (`config.supervised_logits_only = False`: logits
  at every position, as the official code computes), at two supervised shares.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass

import torch

from finetune.compile import compile_layers
from finetune.devices import peak_flops
from finetune.models.baichuan import BaichuanConfig, BaichuanForCausalLM
from finetune.trainer import training_flops_per_token

GiB = 1024**3
# Baichuan2-7B-Base config.json (docs/BAICHUAN2.md, "Models").
BAICHUAN2_7B = {
    "vocab_size": 125696,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "max_position_embeddings": 4096,
    "model_max_length": 4096,
}
LORA_RANKS = (16, 1)  # ours, official
# Activation checkpointing tried in turn until a step fits: off, then every 4th, 2nd, and every layer.
CHECKPOINT_EVERY = (None, 4, 2, 1)
# Supervised label shares for the logits/loss memory rows: every position (as in the throughput rows), and the
# official data's share (about 84% of real tokens are trained, docs/BAICHUAN2.md, "Training data") in a full packed row.
LABEL_SHARES = (1.0, 0.84)


@dataclass
class StepResult:
    run: str
    layers: int
    seq_len: int
    checkpoint_every: int | None
    seconds_per_step: float
    tokens_per_second: float
    tflops: float
    mfu: float | None
    peak_gib: float


def build_model(
    overrides: dict, device: torch.device, dtype: torch.dtype = torch.bfloat16
) -> BaichuanForCausalLM:
    """A randomly initialised Baichuan2 built directly on `device` in `dtype` (no fp32 copy on the way)."""
    config = BaichuanConfig(**{**BAICHUAN2_7B, **overrides})
    config.use_cache = False
    with torch.device(device):
        model = BaichuanForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.train()


def flops_per_token(model: torch.nn.Module, config: BaichuanConfig, seq_len: int) -> float:
    """The trainer's 6N (4N with a frozen base: no weight gradients) + 12*L*d*S for attention scores and values."""
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return training_flops_per_token(model) + attention


def random_batch(
    vocab_size: int, seq_len: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """One row of random ids (never the pad id 0) with every label trained."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (1, seq_len), generator=generator).to(device)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def _free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def time_steps(model, batch: dict[str, torch.Tensor], warmup: int, steps: int) -> tuple[float, int]:
    """(seconds per forward+backward, peak bytes allocated), timed with CUDA synchronisation after warm-up."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, torch.cuda.max_memory_allocated()


def measure(model, run: str, batch, warmup: int, steps: int, peak: float | None) -> StepResult:
    """Time `model` with activation checkpointing off; while that runs out of memory, checkpoint every 4th,
    every 2nd, then every layer (the least recompute that fits)."""
    for every in CHECKPOINT_EVERY:
        if every:
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every
            )
        try:
            seconds, peak_bytes = time_steps(model, batch, warmup, steps)
            break
        except torch.cuda.OutOfMemoryError:
            if every == CHECKPOINT_EVERY[-1]:
                raise
        finally:
            if every:
                model.activation_checkpointing_disable()
        # Out of the except block, so the failed step's tensors (held by its traceback) can be freed.
        model.zero_grad(set_to_none=True)
        _free_memory()
    config = model.config
    seq_len = batch["input_ids"].shape[1]
    tokens_per_second = seq_len / seconds
    achieved = tokens_per_second * flops_per_token(model, config, seq_len)
    return StepResult(
        run=run,
        layers=config.num_hidden_layers,
        seq_len=seq_len,
        checkpoint_every=every,
        seconds_per_step=seconds,
        tokens_per_second=tokens_per_second,
        tflops=achieved / 1e12,
        mfu=achieved / peak if peak else None,
        peak_gib=peak_bytes / GiB,
    )


def throughput(
    seq_len: int,
    warmup: int,
    steps: int,
    overrides: dict | None = None,
    device: str = "cuda",
    compiled: bool = False,
) -> list[StepResult]:
    """Full fine-tuning, then LoRA at each rank of LORA_RANKS, on one randomly initialised model."""
    from peft import LoraConfig, get_peft_model

    device = torch.device(device)
    peak = peak_flops(torch.cuda.get_device_name())
    model = build_model(overrides or {}, device)
    suffix = ""
    if compiled:
        compile_layers(model)
        suffix = ", compiled layers"
    batch = random_batch(model.config.vocab_size, seq_len, device)
    results = [measure(model, "full" + suffix, batch, warmup, steps, peak=peak)]
    for rank in LORA_RANKS:
        config = LoraConfig(r=rank, lora_alpha=32, lora_dropout=0.1, target_modules=["W_pack"], bias="none")
        peft_model = get_peft_model(model, config)
        _free_memory()
        results.append(measure(peft_model, f"LoRA r={rank} (W_pack){suffix}", batch, warmup, steps, peak))
        model = peft_model.unload()  # the base without adapters, for the next rank
    del model
    _free_memory()
    return results


@dataclass
class LossMemory:
    supervised_share: float
    ours_gib: float
    naive_gib: float


def head_loss_peak(model, hidden: torch.Tensor, labels: torch.Tensor, full_logits: bool) -> int:
    """Peak bytes above the resting state for one head + loss forward and backward."""
    model.config.supervised_logits_only = not full_logits
    _free_memory()
    torch.cuda.synchronize()
    resting = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = model(inputs_embeds=hidden, labels=labels)
    if full_logits and out.logits is None:
        raise RuntimeError(
            "BaichuanForCausalLM ignores config.supervised_logits_only = False: no full-logits path to compare"
        )
    out.loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - resting
    hidden.grad = None
    return peak


def loss_memory(
    seq_len: int, shares=LABEL_SHARES, overrides: dict | None = None, device: str = "cuda"
) -> list[LossMemory]:
    """Logits/loss path memory, ours against the naive full-logits path, on a zero-layer model (embedding,
    final norm and head of the 7B shape), so that nothing but the head and the loss allocates."""
    device = torch.device(device)
    model = build_model({**(overrides or {}), "num_hidden_layers": 0}, device)
    model.requires_grad_(False)
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, seq_len, model.config.hidden_size, generator=generator).to(device, torch.bfloat16)
    hidden.requires_grad_(True)
    results = []
    for share in shares:
        labels = torch.randint(3, model.config.vocab_size, (1, seq_len), generator=generator)
        labels[torch.rand(1, seq_len, generator=generator) >= share] = -100
        labels = labels.to(device)
        ours = head_loss_peak(model, hidden, labels, full_logits=False)
        naive = head_loss_peak(model, hidden, labels, full_logits=True)
        results.append(LossMemory(share, ours / GiB, naive / GiB))
    del model, hidden
    _free_memory()
    return results


def _every(n: int | None) -> str:
    return "off" if n is None else "every layer" if n == 1 else f"1 layer in {n}"


def format_tables(device: str, steps: list[StepResult], memory: list[LossMemory]) -> str:
    lines = [
        f"GPU: {device}, bf16, one row of random tokens per step, every label trained",
        "",
        "| run | layers | seq | act. checkpointing | s/step | tokens/s | TFLOP/s | MFU | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a (unknown peak)"
        lines.append(
            f"| {r.run} | {r.layers} | {r.seq_len} | {_every(r.checkpoint_every)} | "
            f"{r.seconds_per_step:.3f} | {r.tokens_per_second:,.0f} | {r.tflops:.0f} | {mfu} | {r.peak_gib:.1f} |"
        )
    lines += [
        "",
        f"Logits/loss path, seq {steps[0].seq_len if steps else '-'}: peak memory of head + loss fwd+bwd",
        "",
        "| supervised labels | ours GiB | naive full logits GiB | ours / naive |",
        "|---|---|---|---|",
    ]
    for m in memory:
        ratio = m.ours_gib / m.naive_gib if m.naive_gib else float("nan")
        lines.append(f"| {m.supervised_share:.0%} | {m.ours_gib:.2f} | {m.naive_gib:.2f} | {ratio:.2f} |")
    return "\n".join(lines)


def run(seq_len: int = 4096, warmup: int = 2, steps: int = 5, compiled: bool = True) -> str:
    """Every GPU figure as markdown tables; raises RuntimeError without a CUDA device."""
    # Before CUDA starts: fewer fragmentation OOMs at the edge of the full-model fit.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: the GPU benchmark needs one")
    step_results = throughput(seq_len, warmup, steps)
    if compiled:
        step_results += throughput(seq_len, warmup, steps, compiled=True)
    memory = loss_memory(seq_len)
    return format_tables(torch.cuda.get_device_name(), step_results, memory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_gpu", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seq_len", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--no_compile", action="store_true", help="skip the compiled-layer runs")
    args = parser.parse_args(argv)
    try:
        print(run(args.seq_len, args.warmup, args.steps, not args.no_compile))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
