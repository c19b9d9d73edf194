"""Loss and perplexity of a model on a held-out data file, over exactly the tokens training supervises.

    python -m finetune.evaluate --model output/lora --data_path data/held_out.json \\
        [--model_max_length 512] [--mask last_assistant] [--output eval.json]

The file is read and tokenized as training reads it, with `finetune/sft.py`'s data flags (`DataOptions`: format,
template, truncation policy, masking), so the numbers compare with the training loss when the flags match. ``loss`` is the token mean of the cross-entropy over every
supervised token of the whole file (not a mean of per-batch or per-sample means): the sum of the
per-token losses divided by their count. ``perplexity`` is ``exp(loss)``. The model may be a base, full
fine-tuned or LoRA adapter directory.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
import transformers
from transformers import HfArgumentParser

from finetune import exits
from finetune.data.cache import resolve_cache_dir
from finetune.data.collator import DataCollatorForSFT
from finetune.data.constants import IGNORE_INDEX
from finetune.data.dataset import build_dataset
from finetune.data.formats import DataError
from finetune.data.options import DataOptions
from finetune.dtypes import parse_dtype
from finetune.jsonfile import write_json
from finetune.loading import (
    LoadError,
    load_model_for_inference,
    load_tokenizer,
    model_type_of,
    resolve_model_path,
)


def length_sorted_batches(
    samples: Sequence[dict[str, Any]], batch_size: int, collator: DataCollatorForSFT
) -> Iterator[dict[str, torch.Tensor]]:
    """Padded batches of similar lengths, longest first (an out-of-memory error then comes at once).
    The loss is a sum over tokens, so the order does not change it."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        yield collator([samples[i] for i in order[start : start + batch_size]])


def supervised_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Sum of the per-token cross-entropies (in fp32) where the shifted label is supervised, and their count."""
    shift_labels = labels[:, 1:]
    trained = shift_labels != IGNORE_INDEX
    picked = logits[:, :-1][trained].float()
    total = F.cross_entropy(picked, shift_labels[trained], reduction="sum")
    return total.item(), int(trained.sum())


@torch.inference_mode()
def evaluate_loss(model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float | int]:
    """Token-mean loss and perplexity over all batches."""
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        batch_sum, batch_tokens = supervised_loss_sum(logits, batch["labels"])
        loss_sum += batch_sum
        tokens += batch_tokens
    if not tokens:
        raise ValueError("no supervised tokens to evaluate")
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}


def evaluate(
    model_path: str,
    options: DataOptions,
    model_max_length: int = 512,
    batch_size: int = 4,
    dtype: str = "auto",
    device: str | None = None,
    allow_base_mismatch: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model_path`` on ``options.data_path``; returns the metrics with the settings that produced them."""
    from finetune.devices import device_type

    tokenizer = load_tokenizer(model_path, model_max_length=model_max_length)
    # The data first: a bad record stops the run before any weights are read.
    dataset, report = build_dataset(
        tokenizer,
        options,
        model_max_length,
        cache_dir=resolve_cache_dir(options.data_cache_dir),
        model_type=model_type_of(model_path),
    )
    model = load_model_for_inference(
        model_path,
        dtype=parse_dtype(dtype),
        device=device or device_type(),
        allow_base_mismatch=allow_base_mismatch,
    )
    samples = dataset.select_columns(["input_ids", "labels"]).to_list()
    collator = DataCollatorForSFT(pad_token_id=tokenizer.pad_token_id)
    metrics = evaluate_loss(model, length_sorted_batches(samples, batch_size, collator))
    return {
        "model": model_path,
        "data_path": list(options.data_path),
        **metrics,
        "samples": len(samples),
        "records_read": report.records_read,
        "dropped": report.dropped,
        "truncated": report.truncated,
        "template": report.template,
        "model_max_length": model_max_length,
        "truncation": report.truncation,
        "mask": report.masking,
    }


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "base, full fine-tuned or LoRA adapter directory"})
    model_max_length: int = field(default=512, metadata={"help": "as in training"})
    batch_size: int = field(default=4)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = field(
        default="auto", metadata={"help": "default: the checkpoint's"}
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda, npu, cpu… (default: the accelerator when there is one)"}
    )
    output: str | None = field(default=None, metadata={"help": "also write the metrics to this JSON file"})
    allow_base_mismatch: bool = field(
        default=False, metadata={"help": "load an adapter onto a base it was not trained on"}
    )


def parse_args(argv: list[str] | None = None) -> tuple[EvaluateArguments, DataOptions]:
    parser = HfArgumentParser((EvaluateArguments, DataOptions), prog="python -m finetune.evaluate")
    args, options = parser.parse_args_into_dataclasses(args=argv)
    if args.model_max_length < 2 or args.batch_size < 1:
        parser.error("--model_max_length must be at least 2 and --batch_size at least 1")
    return args, options


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    transformers.utils.logging.disable_progress_bar()
    try:
        result = evaluate(
            resolve_model_path(args.model),
            options,
            model_max_length=args.model_max_length,
            batch_size=args.batch_size,
            dtype=args.dtype,
            device=args.device,
            allow_base_mismatch=args.allow_base_mismatch,
        )
    except (DataError, LoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exits.BAD_INPUT
    except (OSError, ValueError) as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return exits.BAD_INPUT
    print(
        f"eval loss {result['loss']:.4f}  perplexity {result['perplexity']:.3f}  over {result['tokens']} supervised "
        f"tokens in {result['samples']} samples ({result['records_read']} records read)"
    )
    if args.output:
        write_json(args.output, result)
    return exits.OK


if __name__ == "__main__":
    sys.exit(main())
