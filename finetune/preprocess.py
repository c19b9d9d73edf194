"""Tokenize training data exactly as training will, and write it out with a data report.

    python -m finetune.preprocess --model_name_or_path M --data_path D [D ...] --model_max_length 512 \\
        --output OUT.jsonl [--template T] [--truncation turns|official] [--mask all_assistant|last_assistant] \\
        [--skip_invalid True] [--data_format F] [--preprocessing_num_workers N]

The data flags are `finetune/sft.py`'s (`DataOptions`; ``--masking``, ``--format`` and ``--num_proc`` are kept
as aliases). OUT.jsonl gets one line per kept sample, in input order: {"id": <source id or null>, "input_ids":
[...], "labels": [...]} (unpadded). The data report goes to OUT.report.json and a short table to the console.
Bad data ends the run with one line naming the file, record and problem (exit status 2).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from finetune.data.dataset import DEFAULT_CACHE_DIR, build_dataset
from finetune.data.formats import DataError
from finetune.data.options import DataOptions


@dataclass
class PreprocessArguments:
    model_name_or_path: str = field(metadata={"help": "model directory (its tokenizer is used)"})
    output: str = field(metadata={"help": "JSONL file to write"})
    model_max_length: int = field(default=512, metadata={"help": "as in training"})
    cache_dir: str = field(
        default=DEFAULT_CACHE_DIR, metadata={"help": 'tokenized-data cache; "none" disables it'}
    )


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((PreprocessArguments, DataOptions), prog="python -m finetune.preprocess")


def report_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def main(argv: list[str] | None = None) -> int:
    args, options = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import finetune  # noqa: F401  (registers the Baichuan classes with the Auto factories)
    from finetune.loading import load_tokenizer, model_type_of

    try:
        tokenizer = load_tokenizer(args.model_name_or_path, model_max_length=args.model_max_length)
    except OSError as e:
        print(
            f"{args.model_name_or_path}: cannot load a tokenizer ({str(e).splitlines()[0]})", file=sys.stderr
        )
        return 2
    try:
        dataset, report = build_dataset(
            tokenizer,
            options,
            args.model_max_length,
            cache_dir=None if args.cache_dir.lower() == "none" else args.cache_dir,
            model_type=model_type_of(args.model_name_or_path),
        )
    except DataError as e:
        print(e, file=sys.stderr)
        return 2
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as f:
        for row in dataset.select_columns(["id", "input_ids", "labels"]):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    report.write(report_path(output))
    print(f"wrote {report.samples_kept} samples to {output} (report: {report_path(output)})")
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
