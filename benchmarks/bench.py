"""Speed benchmarks: markdown tables of figures, never a timing assertion (`make bench`).

    python -m benchmarks.bench [--quick] [--gpu] [--batch_size 4] [--threads 1] [--workdir DIR]

CPU training rows: one epoch of data/sample_chat.json on tiny random Baichuan2 checkpoints (finetune.tiny, plus
one with the real 125,696-token vocabulary, where the head dominates as in the real model), fp32, one process,
the same loop for every setting: collate → forward → backward → clip to 1.0 → AdamW, after one untimed
forward+backward. Rates and ratios use CPU time (wall time is printed too: other users of a shared machine
inflate it). The settings differ only in what the official recipe wastes:
  official  what fine-tune.py computes: the first 512 tokens of each sample, every row padded to 512, logits
            at every position (`config.supervised_logits_only = False`), random order;
  padding   sft.py --packing False: turn-aware truncation, rows padded to the batch's longest, head and loss
            only where a label is trained, group_by_length order;
  packing   sft.py's defaults: as padding, but samples packed into 512-token rows (random order).
Each case runs in a process of its own (forked from one that imported everything), so its peak RSS is its own,
with one torch thread by default: on a shared machine two threads spin at OpenMP barriers and measured 5-7x
slower than one.
The sft.py row (real-vocabulary model) runs the real `python finetune/sft.py` with its defaults, end to end
(start-up, tokenising, packing, training, saving), as a subprocess.

Data-path rows: `finetune.data.pipeline.prepare` (read, tokenise, pack into 512-token rows; what sft.py does
before its first step) into an empty cache, on 10,000 and 100,000 conversations cycled from the sample data with
varied text (`--data_1m` adds 1,000,000), with 1 and 2 `--preprocessing_num_workers`, each in a process of its
own; then the same call again, a cache hit. The reference row packs the same samples with the previous in-memory
packer (benchmarks/reference_packing.py) and checks that its rows are identical.
`--gpu` adds `benchmarks.bench_gpu` (Baichuan2-7B shape on one GPU).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

from benchmarks.reference_packing import pack_dataset as reference_pack
from finetune.data.collator import DataCollatorForSFT
from finetune.data.constants import IGNORE_INDEX
from finetune.data.dataset import tokenize_data
from finetune.data.options import DataOptions
from finetune.data.packing import pack
from finetune.data.pipeline import prepare
from finetune.jsonfile import write_json
from finetune.loading import load_tokenizer
from finetune.tiny import random_state_dict, write_tiny_checkpoint, write_weights

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "data" / "sample_chat.json"
SFT_SCRIPT = REPO / "finetune" / "sft.py"
OFFICIAL_VOCAB_SIZE = 125696
MAX_LENGTH = 512  # the official model_max_length
DATA_SIZES = (10_000, 100_000)
DATA_WORKERS = (1, 2)
# The official optimizer settings (docs/BAICHUAN2.md, "The official command line"); they do not change the speed, only make it honest.
ADAMW = {"lr": 2e-5, "betas": (0.9, 0.98), "eps": 1e-8, "weight_decay": 1e-4}
MAX_GRAD_NORM = 1.0
# Imported once by the fork server. Not this module: as `python -m benchmarks.bench` it is re-run in each child as
# the main module, and runpy warns when it is already imported.
PRELOAD = [
    "datasets",
    "transformers.trainer_pt_utils",
    "finetune.data.collator",
    "finetune.data.packing",
    "finetune.data.dataset",
    "finetune.data.pipeline",
    "benchmarks.reference_packing",
    "finetune.loading",
]


@dataclass(frozen=True)
class Setting:
    name: str
    truncation: str  # finetune.data.dataset policy
    layout: str  # "max_length" (static padding), "longest" (dynamic padding) or "packed"
    full_logits: bool
    order: str  # "random" or "group_by_length"


SETTINGS = (
    Setting("official", "official", "max_length", True, "random"),
    Setting("padding", "turns", "longest", False, "group_by_length"),
    Setting("packing", "turns", "packed", False, "random"),
)


@dataclass(frozen=True)
class BenchModel:
    name: str
    arch: str
    vocab_size: int | None  # None: the tiny tokenizer's own piece count
    settings: tuple[Setting, ...] = SETTINGS
    run_sft: bool = False


MODELS = (
    BenchModel("tiny-7b", "7b", None),
    BenchModel("tiny-13b", "13b", None),
    # The head dominates here (an official epoch takes minutes): official against our defaults only, plus the
    # real sft.py run, which is the comparison the speed goal is about.
    BenchModel(
        "tiny-7b, vocab 125,696",
        "7b",
        OFFICIAL_VOCAB_SIZE,
        settings=(SETTINGS[0], SETTINGS[2]),
        run_sft=True,
    ),
)


@dataclass(frozen=True)
class Case:
    model: str
    checkpoint: str
    data_path: str
    setting: Setting
    batch_size: int
    threads: int
    max_length: int = MAX_LENGTH
    seed: int = 0


# ---------------------------------------------------------------- inputs


def write_checkpoint(directory: Path, model: BenchModel) -> Path:
    """A tiny checkpoint; with `vocab_size`, its config and random weights are widened to that vocabulary (the
    tokenizer stays the tiny one, so every id stays below its piece count and the extra rows only cost)."""
    path = write_tiny_checkpoint(directory, arch=model.arch)
    if model.vocab_size is None:
        return path
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config["vocab_size"] = model.vocab_size
    write_json(path / "config.json", config, sort_keys=True)
    write_weights(random_state_dict(config, seed=0, dtype=torch.float32), path, "bin")
    return path


def write_conversations(source: Path, target: Path, count: int) -> Path:
    """`count` records cycled from `source` (ids made unique), as one JSON list."""
    records = json.loads(source.read_text(encoding="utf-8"))
    cycled = [{**records[i % len(records)], "id": str(i)} for i in range(count)]
    write_json(target, cycled)
    return target


def _rotated(text: str, k: int) -> str:
    k %= max(len(text), 1)
    return text[k:] + text[:k]


def write_varied_conversations(source: Path, target: Path, count: int) -> Path:
    """`count` records cycled from `source` with varied text (the i-th copy of a record has every reply rotated by
    i characters and its prompts prefixed with the record number, so no two tokenise alike), written one record at
    a time as one JSON list."""
    records = json.loads(source.read_text(encoding="utf-8"))
    with target.open("w", encoding="utf-8") as f:
        f.write("[\n")
        for i in range(count):
            record, copy = records[i % len(records)], i // len(records)
            turns = [
                {
                    "from": turn["from"],
                    "value": f"{i}: {turn['value']}"
                    if turn["from"] == "human"
                    else _rotated(turn["value"], copy),
                }
                for turn in record["conversations"]
            ]
            f.write(
                ("," if i else "") + json.dumps({"id": str(i), "conversations": turns}, ensure_ascii=False)
            )
            f.write("\n")
        f.write("]\n")
    return target


# ---------------------------------------------------------------- cases (each in its own process)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, steadier than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quiet_progress_bars() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def batch_order(dataset, setting: Setting, batch_size: int, seed: int) -> list[list[int]]:
    """Row indices of each batch, in the order the Trainer's sampler would give them."""
    generator = torch.Generator().manual_seed(seed)
    if setting.order == "group_by_length":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        order = list(LengthGroupedSampler(batch_size, lengths=dataset["length"], generator=generator))
    else:
        order = torch.randperm(len(dataset), generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def run_case(case: Case) -> dict:
    """Tokenise, lay out and train one epoch; the figures of one table row."""
    from transformers import AutoModelForCausalLM

    quiet_progress_bars()
    torch.set_num_threads(case.threads)
    setting = case.setting
    tokenizer = load_tokenizer(case.checkpoint, model_max_length=case.max_length)
    options = DataOptions(data_path=[case.data_path], truncation=setting.truncation)
    samples, _ = tokenize_data(tokenizer, options, case.max_length, cache_dir=None)
    dataset, packing_efficiency = samples.dataset(), None
    if setting.layout == "packed":
        dataset, stats = pack(samples, case.max_length)
        packing_efficiency = stats["packing_efficiency"]
    columns = ["input_ids", "labels"] + (["position_ids"] if setting.layout == "packed" else [])
    rows = dataset.select_columns(columns).to_list()
    batches = batch_order(dataset, setting, case.batch_size, case.seed)
    collator = DataCollatorForSFT(
        pad_token_id=tokenizer.pad_token_id,
        pad_to_multiple_of=case.max_length if setting.layout == "max_length" else None,
    )

    torch.manual_seed(case.seed)
    model = AutoModelForCausalLM.from_pretrained(
        case.checkpoint, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.config.use_cache = False
    model.config.supervised_logits_only = not setting.full_logits
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)

    warmup = model(**collator([rows[i] for i in batches[0]]))
    if setting.full_logits and warmup.logits is None:
        raise RuntimeError(f"{case.checkpoint}: the model ignores config.supervised_logits_only = False")
    warmup.loss.backward()
    model.zero_grad(set_to_none=True)
    del warmup

    positions = real = supervised = 0
    start, start_cpu = time.perf_counter(), cpu_seconds()
    for indices in batches:
        batch = collator([rows[i] for i in indices])
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        positions += batch["input_ids"].numel()
        real += int(batch["attention_mask"].sum())
        supervised += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    return {
        "model": case.model,
        "setting": setting.name,
        "steps": len(batches),
        "positions": positions,
        "real_tokens": real,
        "supervised_tokens": supervised,
        "fill": real / positions,
        "packing_efficiency": packing_efficiency,
        "epoch_s": seconds,
        "epoch_cpu_s": cpu,
        "supervised_tok_s": supervised / cpu,
        "peak_rss_mib": peak_rss_mib(),
    }


def run_data_path(checkpoint: str, data_path: str, conversations: int, workers: int, cache_dir: str) -> dict:
    """`prepare` with packing into the empty ``cache_dir`` (what sft.py does before its first step), then again
    (a cache hit); the report's stage figures and this process's peak RSS (workers counted apart)."""
    quiet_progress_bars()
    tokenizer = load_tokenizer(checkpoint, model_max_length=MAX_LENGTH)
    options = DataOptions(data_path=[data_path], preprocessing_num_workers=workers)
    start = time.perf_counter()
    report = prepare(tokenizer, options, MAX_LENGTH, packing=True, cache_dir=cache_dir).report
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    prepare(tokenizer, options, MAX_LENGTH, packing=True, cache_dir=cache_dir)
    hit = time.perf_counter() - start
    stages = report.stages
    return {
        "conversations": conversations,
        "path": "ours",
        "workers": workers,
        "tokens": report.tokens,
        "rows": report.packed_rows,
        "read_s": stages["read"]["seconds"],
        "tokenize_s": stages["tokenize"]["seconds"],
        "pack_s": stages["pack"]["seconds"],
        "total_s": seconds,
        "conversations_s": report.conversations_per_second,
        "tokens_s": report.tokens_per_second,
        "peak_rss_mib": peak_rss_mib(),
        "workers_peak_rss_mib": stages["tokenize"].get("workers_peak_rss_mib"),
        "hit_s": hit,
    }


def run_reference_packer(checkpoint: str, data_path: str, conversations: int, cache_dir: str) -> dict:
    """The previous in-memory packer on the samples `run_data_path` cached in ``cache_dir``, and whether its rows
    equal the packed rows cached there (every token, label and position, row by row)."""
    import numpy as np

    quiet_progress_bars()
    tokenizer = load_tokenizer(checkpoint, model_max_length=MAX_LENGTH)
    samples, report = tokenize_data(
        tokenizer, DataOptions(data_path=[data_path]), MAX_LENGTH, cache_dir=cache_dir
    )
    start = time.perf_counter()
    reference, stats = reference_pack(samples.dataset(), MAX_LENGTH)
    seconds = time.perf_counter() - start
    rss = peak_rss_mib()
    ours, _ = pack(samples, MAX_LENGTH, cache_dir)

    def flat(dataset, column):
        values = dataset.data.column(column).combine_chunks()
        return np.diff(values.offsets.to_numpy()), values.flatten().to_numpy().astype(np.int64)

    identical = len(ours) == len(reference) and all(
        all(np.array_equal(a, b) for a, b in zip(flat(ours, c), flat(reference, c)))
        for c in ("input_ids", "labels", "position_ids")
    )
    return {
        "conversations": conversations,
        "path": "previous packer",
        "workers": 1,
        "tokens": report.tokens,
        "rows": stats["rows"],
        "pack_s": seconds,
        "peak_rss_mib": rss,
        "identical": identical,
    }


def run_isolated(function, *args):
    """`function(*args)` in a fresh process forked from a server that already imported the heavy modules (no
    per-case import cost), so that its peak RSS is its own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        return pool.submit(function, *args).result()


def run_sft(
    checkpoint: Path, data_path: Path, workdir: Path, batch_size: int, threads: int, model: str
) -> dict:
    """`python finetune/sft.py` with its defaults for one epoch, in a fresh directory (so its dataset cache
    misses); wall time, CPU time and peak RSS of that process."""
    run_dir = Path(tempfile.mkdtemp(prefix="sft-", dir=workdir))
    command = [
        sys.executable,
        str(SFT_SCRIPT),
        "--model_name_or_path", str(checkpoint),
        "--data_path", str(data_path),
        "--output_dir", str(run_dir / "output"),
        "--model_max_length", str(MAX_LENGTH),
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", str(batch_size),
        "--learning_rate", str(ADAMW["lr"]),
        "--save_strategy", "no",
        "--report_to", "none",
    ]  # fmt: skip
    log = run_dir / "sft.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
    }
    with open(log, "wb") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines() or [""]
        raise RuntimeError(f"sft.py exited with {process.returncode} (see {log}): {lines[-1]}")
    return {
        "model": model,
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


# ---------------------------------------------------------------- tables


def _number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def training_table(rows: list[dict]) -> str:
    """One markdown row per case; "vs official" is the official epoch CPU time of the same model over this
    one's (CPU time: other users of a shared machine inflate wall time, not it)."""
    official = {r["model"]: r["epoch_cpu_s"] for r in rows if r["setting"] == "official"}
    lines = [
        "| model | setting | steps | computed positions | real tokens | supervised tokens | fill | "
        "packing eff. | epoch s | epoch CPU s | supervised tok per CPU s | vs official | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        packing = f"{r['packing_efficiency']:.1%}" if r["packing_efficiency"] is not None else "-"
        speedup = official[r["model"]] / r["epoch_cpu_s"] if r["model"] in official else None
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['steps']} | {_number(r['positions'])} | "
            f"{_number(r['real_tokens'])} | {_number(r['supervised_tokens'])} | {r['fill']:.1%} | {packing} | "
            f"{r['epoch_s']:.2f} | {r['epoch_cpu_s']:.2f} | {_number(r['supervised_tok_s'])} | "
            f"{f'{speedup:.2f}x' if speedup else '-'} | {_number(r['peak_rss_mib'])} |"
        )
    return "\n".join(lines)


def sft_table(rows: list[dict], training: list[dict]) -> str:
    """sft.py end to end against the official training loop alone (which leaves out start-up and tokenising,
    so the ratio understates our lead)."""
    official = {r["model"]: r["epoch_cpu_s"] for r in training if r["setting"] == "official"}
    lines = [
        "| model | sft.py wall s | sft.py CPU s | official epoch CPU s / sft.py CPU s | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{official[r['model']] / r['cpu_s']:.2f}x" if r["model"] in official else "-"
        lines.append(
            f"| {r['model']} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {ratio} | {_number(r['peak_rss_mib'])} |"
        )
    return "\n".join(lines)


def data_table(rows: list[dict]) -> str:
    """One markdown row per data-path run; "-" where a figure does not apply."""

    def cell(row: dict, key: str, digits: int = 0) -> str:
        value = row.get(key)
        return "-" if value is None else _number(value, digits)

    lines = [
        "| conversations | path | workers | tokens | packed rows | read s | tokenise s | pack s | total s | "
        "conversations/s | tokens/s | peak RSS MiB | workers' peak RSS MiB | cache hit s | rows identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        identical = {True: "yes", False: "**no**"}.get(r.get("identical"), "-")
        lines.append(
            f"| {_number(r['conversations'])} | {r['path']} | {r['workers']} | {_number(r['tokens'])} | "
            f"{_number(r['rows'])} | {cell(r, 'read_s', 2)} | {cell(r, 'tokenize_s', 2)} | {cell(r, 'pack_s', 2)} | "
            f"{cell(r, 'total_s', 1)} | {cell(r, 'conversations_s')} | {cell(r, 'tokens_s')} | "
            f"{cell(r, 'peak_rss_mib')} | {cell(r, 'workers_peak_rss_mib')} | {cell(r, 'hit_s', 2)} | {identical} |"
        )
    return "\n".join(lines)


def run_data(workdir: Path, checkpoint: Path, sizes: tuple[int, ...], workers: tuple[int, ...]) -> list[dict]:
    """The data-path rows: per size, ours with each worker count, and the previous packer on the same samples
    (not at 1M conversations, where it would need about 80 GB)."""
    rows = []
    for size in sizes:
        data_path = write_varied_conversations(SAMPLE_DATA, workdir / f"data-{size}.json", size)
        for n in workers:
            cache = workdir / f"cache-{size}-{n}"
            rows.append(run_isolated(run_data_path, str(checkpoint), str(data_path), size, n, str(cache)))
            if n == workers[0] and size < 1_000_000:
                rows.append(
                    run_isolated(run_reference_packer, str(checkpoint), str(data_path), size, str(cache))
                )
            shutil.rmtree(cache)
        data_path.unlink()
    return rows


def machine(threads: int) -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} thread(s) per process"


# ---------------------------------------------------------------- entry point


def run_cpu(workdir: Path, quick: bool, batch_size: int, threads: int, data_1m: bool = False) -> str:
    """Every CPU table, as markdown."""
    models = MODELS[:1] if quick else MODELS
    conversations = 16 if quick else None
    data_sizes = (1000,) if quick else DATA_SIZES + ((1_000_000,) if data_1m else ())
    data_path = (
        write_conversations(SAMPLE_DATA, workdir / "train.json", conversations)
        if conversations
        else SAMPLE_DATA
    )
    samples = conversations or len(json.loads(SAMPLE_DATA.read_text(encoding="utf-8")))
    checkpoints = {m.name: write_checkpoint(workdir / f"ckpt-{i}", m) for i, m in enumerate(models)}

    training = [
        run_isolated(run_case, Case(m.name, str(checkpoints[m.name]), str(data_path), s, batch_size, threads))
        for m in models
        for s in m.settings
    ]
    sft = [
        run_sft(checkpoints[m.name], data_path, workdir, batch_size, threads, m.name)
        for m in models
        if m.run_sft and not quick
    ]
    data = run_data(
        workdir, checkpoints[models[0].name], data_sizes, DATA_WORKERS[:1] if quick else DATA_WORKERS
    )

    parts = [
        f"CPU: {machine(threads)}; {date.today().isoformat()}",
        "",
        f"Training, one epoch of {data_path.name} ({samples} conversations), batch {batch_size}, "
        f"model_max_length {MAX_LENGTH}, fp32, one process",
        "",
        training_table(training),
        "",
        "fill = real tokens / computed positions; packing eff. = real tokens / packed-row capacity; "
        "vs official = official epoch CPU s / this epoch CPU s (same model); CPU s = user + system time.",
    ]
    if sft:
        parts += [
            "",
            "The real `python finetune/sft.py` (defaults), one epoch end to end:",
            "",
            sft_table(sft, training),
        ]
    parts += [
        "",
        f"Data path (read, tokenise, pack into {MAX_LENGTH}-token rows, {models[0].name} tokenizer; one process "
        "each, a fresh cache)",
        "",
        data_table(data),
        "",
        "peak RSS = the process's high-water mark, memory-mapped Arrow pages it touched included; workers' = the "
        "largest tokenising worker's; cache hit s = the same call again.",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny-7b only, 16 conversations, no sft.py run, 1k data-path run"
    )
    parser.add_argument("--gpu", action="store_true", help="also run benchmarks.bench_gpu (needs CUDA)")
    parser.add_argument(
        "--batch_size", type=int, default=4, help="rows per step (per_device_train_batch_size)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process; more than the free cores makes OpenMP barriers dominate the figures",
    )
    parser.add_argument("--workdir", default=None, help="where checkpoints and data go (default: a temp dir)")
    parser.add_argument(
        "--data_1m", action="store_true", help="add 1,000,000 conversations to the data-path table (minutes)"
    )
    args = parser.parse_args(argv)
    for name in ("batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")

    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        print(run_cpu(workdir, args.quick, args.batch_size, args.threads, args.data_1m), flush=True)
    if args.gpu:
        from benchmarks import bench_gpu

        try:
            print("\n" + bench_gpu.run())
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
