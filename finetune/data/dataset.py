"""Data files → tokenized, unpadded (input_ids, labels) samples in Arrow files on disk, and the data report.

Stages, none of which holds the corpus in memory: read and validate the records one at a time (formats.py) into
Arrow shards of `SHARD_RECORDS` conversations → tokenize each shard with the template (templates.py) in a
batched ``Dataset.map`` with ``num_proc`` workers, applying the truncation policy, written to disk → count the
report from the length/trainable/truncated/dropped columns with numpy. Samples with no trainable token stay in
the files but out of the kept rows. The result is a cache entry (cache.py) keyed by everything that changes it
(data files' path/size/mtime, tokenizer, template, max length, policies, and this code): a second run, and the
other ranks of a run, memory-map it and tokenize nothing.

Truncation policies (``--truncation``):
- ``turns`` (default): keep whole turns from the start while they fit and end the sample after the last kept
  assistant reply, with its end-of-turn target (the eos for baichuan2) kept. Only when the first reply does not
  fit is it cut (with no eos target: the reply did not end there).
- ``official``: cut input_ids and labels to the first ``model_max_length`` tokens, as the official script does.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data.cache import cache_key, find_entry, new_entry, temporary_cache
from finetune.data.formats import Conversation, LoadStats, Message, iter_conversations, resolve_data_files
from finetune.data.meter import measure
from finetune.data.options import DataOptions
from finetune.data.report import DataReport, trainable_tokens
from finetune.data.templates import Masking, Sampler, Template, resolve_template
from finetune.jsonfile import read_json

logger = logging.getLogger(__name__)

# Conversations per raw shard: each is tokenized by one `Dataset.map` and then unmapped, so the memory-mapped
# pages a stage touches stay bounded by a shard, not the corpus.
SHARD_RECORDS = 100_000
RAW_BATCH = 2048  # conversations per Arrow record batch of a raw shard
TOKENIZE_BATCH = 256
SAMPLES = "samples.json"  # an entry's list of tokenized files and their row counts
KEPT = "kept.npy"  # rows with a trainable token, when not all are
NO_TRAINABLE = "no trainable token"
NO_TRAINABLE_AFTER_CUT = "no trainable token within model_max_length"


class Truncation(str, Enum):
    TURNS = "turns"
    OFFICIAL = "official"


# ---------------------------------------------------------------- truncation


def fit_sample(
    sampler: Sampler, roles: Sequence[str], max_length: int, policy: Truncation
) -> tuple[list[int], list[int], bool]:
    """Apply the truncation policy: ``(input_ids, labels, truncated)`` no longer than ``max_length``.

    ``sampler(n)`` gives the sample of the first n messages (see `Template.sampler`), ``roles`` the
    messages' roles.
    """
    input_ids, labels = sampler(len(roles))
    if len(input_ids) <= max_length:
        return input_ids, labels, False
    if policy is Truncation.OFFICIAL:
        return input_ids[:max_length], labels[:max_length], True
    replies = [i for i, role in enumerate(roles) if role == "assistant"]
    for last in reversed(replies):
        if last + 1 < len(roles):
            input_ids, labels = sampler(last + 1)
            if len(input_ids) <= max_length:
                return input_ids, labels, True
    # Even the first reply does not fit: cut it. Its end-of-turn target goes too, since it did not end here.
    input_ids, labels = sampler(replies[0] + 1)
    return input_ids[:max_length], labels[:max_length], True


# ---------------------------------------------------------------- tokenizing (runs inside Dataset.map)


def _conversations_of(batch: dict[str, list]) -> list[Conversation]:
    return [
        Conversation(tuple(Message(r, c) for r, c in zip(roles, contents)), system, id_)
        for id_, system, roles, contents in zip(
            batch["id"], batch["system"], batch["roles"], batch["contents"]
        )
    ]


def tokenize_batch(
    batch: dict[str, list],
    tokenizer: Any,
    template: Template,
    masking: Masking,
    max_length: int,
    truncation: Truncation,
) -> dict[str, list]:
    conversations = _conversations_of(batch)
    encoded = template.encode_batch(tokenizer, conversations)
    out: dict[str, list] = {
        k: [] for k in ("input_ids", "labels", "length", "trainable", "truncated", "dropped")
    }
    for conv, enc in zip(conversations, encoded):
        sampler = template.sampler(conv, tokenizer, masking, encoded=enc)
        roles = [m.role for m in conv.messages]
        input_ids, labels, truncated = fit_sample(sampler, roles, max_length, truncation)
        trainable = trainable_tokens(labels)
        dropped = "" if trainable else (NO_TRAINABLE_AFTER_CUT if truncated else NO_TRAINABLE)
        out["input_ids"].append([] if dropped else input_ids)
        out["labels"].append([] if dropped else labels)
        out["length"].append(len(input_ids))
        out["trainable"].append(trainable)
        out["truncated"].append(truncated)
        out["dropped"].append(dropped)
    return out


# ---------------------------------------------------------------- tokenized samples on disk


@dataclass(frozen=True)
class TokenizedData:
    """Tokenized samples in Arrow files (memory-mapped when read, never loaded whole) and which of their rows are
    the samples: kept ones, in input order, or a subset of them (a split). Rows number the files' concatenation.

    Columns: ``id``, ``input_ids``, ``labels``, ``length`` (and, for the report, ``trainable``, ``truncated``,
    ``dropped``). ``key`` is the cache key of what the files were made from."""

    files: tuple[str, ...]
    rows: np.ndarray
    key: str

    @classmethod
    def load(cls, entry: Path, key: str) -> TokenizedData:
        manifest = read_json(entry / SAMPLES)
        total = sum(manifest["rows"])
        rows = np.load(entry / KEPT) if manifest["kept"] else np.arange(total, dtype=np.int64)
        files = tuple(str(entry / name) for name in manifest["files"])
        return cls(files, rows, key)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, rows: np.ndarray) -> TokenizedData:
        """These samples at positions ``rows`` (of this selection)."""
        return TokenizedData(self.files, self.rows[np.asarray(rows, dtype=np.int64)], self.key)

    def dataset(self):
        """The selected samples as a `datasets.Dataset` (``id``, ``input_ids``, ``labels``, ``length``) over the
        memory-mapped files."""
        import datasets

        parts = [datasets.Dataset.from_file(path) for path in self.files]
        whole = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        if not np.array_equal(self.rows, np.arange(len(whole))):
            whole = whole.select(self.rows, keep_in_memory=True)
        return whole.select_columns(["id", "input_ids", "labels", "length"])


def _features():
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "length": datasets.Value("int32"),
            "trainable": datasets.Value("int32"),
            "truncated": datasets.Value("bool"),
            "dropped": datasets.Value("string"),
        }
    )


# ---------------------------------------------------------------- stages


def _raw_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("system", pa.string()),
            ("roles", pa.list_(pa.string())),
            ("contents", pa.list_(pa.string())),
        ]
    )


def _write_raw(conversations: Iterator[Conversation], directory: Path) -> list[Path]:
    """The conversations as Arrow shards of `SHARD_RECORDS`, written `RAW_BATCH` at a time."""
    import pyarrow as pa

    directory.mkdir()
    schema, shards = _raw_schema(), []
    writer = None
    columns: dict[str, list] = {name: [] for name in schema.names}
    in_shard = 0

    def flush() -> None:
        if columns["id"]:
            writer.write_batch(pa.record_batch([columns[n] for n in schema.names], schema=schema))
            for values in columns.values():
                values.clear()

    for conv in conversations:
        if writer is None:
            shards.append(directory / f"raw-{len(shards):05d}.arrow")
            writer = pa.ipc.new_stream(str(shards[-1]), schema)
        columns["id"].append(conv.id)
        columns["system"].append(conv.system)
        columns["roles"].append([m.role for m in conv.messages])
        columns["contents"].append([m.content for m in conv.messages])
        in_shard += 1
        if len(columns["id"]) == RAW_BATCH:
            flush()
        if in_shard == SHARD_RECORDS:
            flush()
            writer.close()
            writer, in_shard = None, 0
    if writer is not None:
        flush()
        writer.close()
    return shards


def _tokenize_shards(
    shards: list[Path], entry: Path, num_proc: int | None, key: str, fn_kwargs: dict[str, Any]
) -> tuple[list[str], list[int]]:
    """Tokenize each raw shard into ``entry`` (removing the shard after); the files written and their rows."""
    import datasets

    files, rows = [], []
    for i, shard in enumerate(shards):
        raw = datasets.Dataset.from_file(str(shard))
        workers = num_proc if num_proc and num_proc > 1 and len(raw) > TOKENIZE_BATCH else None
        tokenized = raw.map(
            tokenize_batch,
            batched=True,
            batch_size=TOKENIZE_BATCH,
            num_proc=workers,
            fn_kwargs=fn_kwargs,
            remove_columns=["system", "roles", "contents"],
            features=_features(),
            cache_file_name=str(entry / f"samples-{i:05d}.arrow"),
            load_from_cache_file=False,
            new_fingerprint=f"{key}-{i}",
            desc=f"Tokenizing shard {i + 1}/{len(shards)}",
        )
        files += [Path(f["filename"]).name for f in tokenized.cache_files]
        rows += [len(datasets.Dataset.from_file(f["filename"])) for f in tokenized.cache_files]
        del raw, tokenized  # unmaps the shard
        shard.unlink()
    return files, rows


def _count(report: DataReport, stats: LoadStats, entry: Path, files: list[str]) -> np.ndarray:
    """Fill the report's counts from the tokenized files' small columns; returns the kept rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lengths, trainable, truncated, kept_masks = [], [], [], []
    dropped = Counter(stats.invalid)
    for name in files:
        with pa.memory_map(str(entry / name)) as source:
            table = pa.ipc.open_stream(source).read_all()
        reasons = table.column("dropped")
        kept = pc.equal(reasons, "").to_numpy(zero_copy_only=False)
        for value in pc.value_counts(pc.filter(reasons, pc.invert(pc.equal(reasons, "")))).to_pylist():
            dropped[value["values"]] += value["counts"]
        kept_masks.append(kept)
        lengths.append(table.column("length").to_numpy()[kept])
        trainable.append(table.column("trainable").to_numpy()[kept])
        truncated.append(table.column("truncated").to_numpy(zero_copy_only=False)[kept])
        del table
    if not files:
        return np.zeros(0, dtype=np.int64)
    report.count(
        stats.read, dropped, np.concatenate(lengths), np.concatenate(trainable), np.concatenate(truncated)
    )
    return np.flatnonzero(np.concatenate(kept_masks)).astype(np.int64)


def _build(
    sources: list[str],
    options: DataOptions,
    fmt: str | None,
    report: DataReport,
    entry: Path,
    key: str,
    fn_kwargs: dict[str, Any],
) -> None:
    """Read, tokenize and count into the new entry directory ``entry``."""
    stats = LoadStats()
    with measure(report.stages, "read") as figures:
        conversations = iter_conversations(sources, fmt=fmt, skip_invalid=options.skip_invalid, stats=stats)
        shards = _write_raw(conversations, entry / "raw")
        figures["records"] = stats.read
    num_proc = options.preprocessing_num_workers
    logger.info(
        "tokenizing %d conversations (%d shards, %d workers) into %s",
        stats.read,
        len(shards),
        max(num_proc or 1, 1),
        entry.parent,
    )
    with measure(report.stages, "tokenize", workers=max(num_proc or 1, 1)) as figures:
        files, rows = _tokenize_shards(shards, entry, num_proc, key, fn_kwargs)
        kept = _count(report, stats, entry, files)
        figures["tokens"] = report.tokens
    (entry / "raw").rmdir()
    seconds = report.stages["read"]["seconds"] + report.stages["tokenize"]["seconds"]
    report.conversations_per_second = round(report.records_read / seconds, 1) if seconds else 0.0
    report.tokens_per_second = round(report.tokens / seconds, 1) if seconds else 0.0
    all_kept = len(kept) == sum(rows)
    if not all_kept:
        np.save(entry / KEPT, kept)
    manifest = {"files": files, "rows": rows, "kept": not all_kept}
    (entry / SAMPLES).write_text(json.dumps(manifest), encoding="utf-8")


# ---------------------------------------------------------------- entry point


@dataclass
class SamplesPlan:
    """What the samples of a run are made from: resolved settings, sources and the key they give."""

    report: DataReport
    sources: list[str]
    fmt: str | None
    key: str
    fn_kwargs: dict[str, Any]


def plan_samples(
    tokenizer: Any,
    options: DataOptions,
    model_max_length: int,
    data_path: str | Sequence[str] | None,
    model_type: str | None,
) -> SamplesPlan:
    truncation, masking = Truncation(options.truncation), Masking(options.mask)
    template = resolve_template(options.template, tokenizer, model_type)
    fmt = None if options.data_format == "auto" else options.data_format
    sources = resolve_data_files(options.data_path if data_path is None else data_path)
    report = DataReport(
        data_path=list(sources),
        format=fmt,
        template=template.name,
        model_max_length=model_max_length,
        truncation=truncation.value,
        masking=masking.value,
        skip_invalid=options.skip_invalid,
    )
    fn_kwargs = {
        "tokenizer": tokenizer,
        "template": template,
        "masking": masking,
        "max_length": model_max_length,
        "truncation": truncation,
    }
    return SamplesPlan(report, sources, fmt, cache_key(report.to_dict(), sources, tokenizer), fn_kwargs)


def samples_key(
    tokenizer: Any,
    options: DataOptions,
    model_max_length: int = 512,
    data_path: str | Sequence[str] | None = None,
    model_type: str | None = None,
) -> str:
    """The cache key `tokenize_data` files its samples under (computing it reads no record)."""
    return plan_samples(tokenizer, options, model_max_length, data_path, model_type).key


def tokenize_data(
    tokenizer: Any,
    options: DataOptions,
    model_max_length: int = 512,
    data_path: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    model_type: str | None = None,
) -> tuple[TokenizedData, DataReport]:
    """Tokenized training samples on disk, and the data report.

    ``data_path`` overrides ``options.data_path`` (the eval set is read with the training options).
    ``options.template`` None picks baichuan2 for Baichuan models (``model_type`` or the tokenizer class) and the
    tokenizer's chat template otherwise. ``cache_dir`` is the cache directory (`cache.resolve_cache_dir` of
    ``options.data_cache_dir`` in the tools); None turns caching off (a temporary directory). ``report.cache`` says
    "hit" (nothing was read or tokenized), "miss" or "off".
    Raises `DataError` on bad data unless ``options.skip_invalid``, and on a cache directory that cannot be written.
    """
    plan = plan_samples(tokenizer, options, model_max_length, data_path, model_type)
    report, key = plan.report, plan.key
    root = Path(cache_dir) if cache_dir is not None else temporary_cache()
    entry = find_entry(root, key) if cache_dir is not None else None
    if entry is None:
        with new_entry(root, key) as building:
            _build(plan.sources, options, plan.fmt, report, building, key, plan.fn_kwargs)
            report.write(building / "report.json")
        report.cache = "miss" if cache_dir is not None else "off"
        return TokenizedData.load(root / key, key), report
    stages: dict[str, dict[str, float]] = {}
    with measure(stages, "load"):
        data = TokenizedData.load(entry, key)
        report = DataReport.from_dict(read_json(entry / "report.json"))
    report.stages.update(stages)
    report.cache = "hit"
    logger.info("tokenized samples: cache hit (%s), %d samples", entry, len(data))
    return data, report


def build_dataset(
    tokenizer: Any,
    options: DataOptions,
    model_max_length: int = 512,
    data_path: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    model_type: str | None = None,
) -> tuple[Any, DataReport]:
    """`tokenize_data` as a `datasets.Dataset` with columns ``id``, ``input_ids``, ``labels`` (unpadded, in input
    order, only samples with a trainable token) and ``length``, memory-mapped from the cache; and the report."""
    data, report = tokenize_data(tokenizer, options, model_max_length, data_path, cache_dir, model_type)
    return data.dataset(), report
