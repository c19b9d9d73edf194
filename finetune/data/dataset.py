"""Data files → a cached, tokenized `datasets.Dataset` of unpadded (input_ids, labels), and its data report.

Steps: read and validate the records (formats.py) → tokenize with the template (templates.py) in a
batched ``Dataset.map`` with ``num_proc`` → apply the truncation policy → drop samples with no trainable token
→ save under ``cache_dir`` keyed by everything that changes the output (data files' path/size/mtime, tokenizer
vocabulary and class, template, max length, policies, and this code), so a second run does no tokenizing.

Truncation policies (``--truncation``):
- ``turns`` (default): keep whole turns from the start while they fit and end the sample after the last kept
  assistant reply, with its end-of-turn target (the eos for baichuan2) kept. Only when the first reply does not
  fit is it cut (with no eos target: the reply did not end there).
- ``official``: cut input_ids and labels to the first ``model_max_length`` tokens, as the official script does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from finetune.data.formats import (
    Conversation,
    LoadStats,
    Message,
    data_files_signature,
    load_conversations,
    resolve_data_files,
)
from finetune.data.options import DataOptions
from finetune.data.report import DataReport, trainable_tokens
from finetune.data.templates import Masking, Sampler, Template, resolve_template

DEFAULT_CACHE_DIR = ".cache/data"
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


def _tokenize_batch(
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


# ---------------------------------------------------------------- cache key


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what makes a tokenizer produce its ids: its class, vocabulary file (or vocabulary),
    added and special tokens, and chat template."""
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if isinstance(vocab_file, str) and os.path.isfile(vocab_file):
        vocab = _sha256_file(vocab_file)
    else:
        vocab = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    parts = {
        "class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
        "vocab": vocab,
        "added": sorted((i, str(t)) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()),
        "special": [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id],
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _code_fingerprint() -> str:
    """Hash of every module of this package: any change to reading, templates or truncation invalidates the cache."""
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()


def cache_key(settings: dict[str, Any], sources: Sequence[str], tokenizer: Any) -> str:
    material = {
        **settings,
        "data": data_files_signature(sources),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "code": _code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- entry point


def build_dataset(
    tokenizer: Any,
    options: DataOptions,
    model_max_length: int = 512,
    data_path: str | Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    model_type: str | None = None,
) -> tuple[Any, DataReport]:
    """Tokenized training samples and the data report.

    Returns ``(dataset, report)``: a `datasets.Dataset` with columns ``id``, ``input_ids``, ``labels`` (unpadded,
    in input order, only samples with a trainable token) and ``length``; and the `DataReport` (``report.cache``
    says "hit", "miss" or "off"). ``data_path`` overrides ``options.data_path`` (the eval set is read with the
    training options). ``options.template`` None picks baichuan2 for Baichuan models (``model_type`` or the
    tokenizer class) and the tokenizer's chat template otherwise. ``cache_dir`` None turns caching off.
    Raises `DataError` on bad data unless ``options.skip_invalid``.
    """
    import datasets

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
    settings = report.to_dict()
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / cache_key(settings, sources, tokenizer)
        if (cached / "report.json").is_file():
            report = DataReport.from_dict(json.loads((cached / "report.json").read_text(encoding="utf-8")))
            report.cache = "hit"
            return datasets.load_from_disk(str(cached / "dataset")), report

    stats = LoadStats()
    conversations = load_conversations(sources, fmt=fmt, skip_invalid=options.skip_invalid, stats=stats)
    raw = datasets.Dataset.from_dict(
        {
            "id": [c.id for c in conversations],
            "system": [c.system for c in conversations],
            "roles": [[m.role for m in c.messages] for c in conversations],
            "contents": [[m.content for m in c.messages] for c in conversations],
        }
    )
    num_proc = options.preprocessing_num_workers
    tokenized = raw.map(
        _tokenize_batch,
        batched=True,
        batch_size=256,
        num_proc=num_proc if num_proc and num_proc > 1 and len(raw) > 256 else None,
        fn_kwargs={
            "tokenizer": tokenizer,
            "template": template,
            "masking": masking,
            "max_length": model_max_length,
            "truncation": truncation,
        },
        remove_columns=["system", "roles", "contents"],
        new_fingerprint=hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:16],
        desc="Tokenizing",
    )
    meta = tokenized.select_columns(["length", "trainable", "truncated", "dropped"]).to_dict()
    report.count(
        stats.read, stats.invalid, meta["length"], meta["trainable"], meta["truncated"], meta["dropped"]
    )
    dataset = tokenized.filter(
        lambda reasons: [not r for r in reasons], input_columns="dropped", batched=True
    )
    dataset = dataset.remove_columns(["trainable", "truncated", "dropped"])
    if cached is not None:
        dataset = _save(dataset, report, cached)
        report.cache = "miss"
    return dataset, report


def _save(dataset, report: DataReport, target: Path):
    """Write dataset and report to ``target`` atomically (a crash leaves no half cache) and reload from there."""
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        dataset.save_to_disk(str(tmp / "dataset"))
        report.write(tmp / "report.json")
        if target.exists():  # another process finished the same key first; its copy is identical
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target / "dataset"))
