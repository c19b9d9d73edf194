"""Data files → a cached, tokenized `datasets.Dataset` of unpadded (input_ids, labels), and its data report.

Steps: read and validate the records (conversation.py) → tokenize with the template (templates.py) in a
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
from collections import Counter
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from finetune.data.constants import IGNORE_INDEX
from finetune.data.formats import (
    Conversation,
    LoadStats,
    Message,
    data_files_signature,
    load_conversations,
    resolve_data_files,
)
from finetune.data.templates import (
    Masking,
    Sample,
    conversation_texts,
    encode_texts,
    prefix_sampler,
    resolve_template,
)

DEFAULT_CACHE_DIR = ".cache/data"
NO_TRAINABLE = "no trainable token"
NO_TRAINABLE_AFTER_CUT = "no trainable token within model_max_length"


class Truncation(str, Enum):
    TURNS = "turns"
    OFFICIAL = "official"


# ---------------------------------------------------------------- truncation


def fit_sample(
    sampler: Callable[[int], Sample], roles: Sequence[str], max_length: int, policy: Truncation
) -> tuple[list[int], list[int], bool]:
    """Apply the truncation policy: ``(input_ids, labels, truncated)`` no longer than ``max_length``.

    ``sampler(n)`` gives the sample of the first n messages (see `templates.prefix_sampler`), ``roles`` the
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


def trainable_tokens(labels: Sequence[int]) -> int:
    """Labels the loss uses: not -100, and not at position 0 (HF shifts labels, so that one predicts nothing)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


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
    template: str,
    masking: Masking,
    max_length: int,
    truncation: Truncation,
) -> dict[str, list]:
    conversations = _conversations_of(batch)
    encoded: list[Sequence[Sequence[int]] | None] = [None] * len(conversations)
    if template == "baichuan2":
        # One tokenizer call for every text of the batch (a fast tokenizer parallelises it).
        texts = [conversation_texts(c) for c in conversations]
        flat = encode_texts(tokenizer, [t for ts in texts for t in ts])
        offset = 0
        for i, ts in enumerate(texts):
            encoded[i] = flat[offset : offset + len(ts)]
            offset += len(ts)
    out: dict[str, list] = {
        k: [] for k in ("input_ids", "labels", "length", "trainable", "truncated", "dropped")
    }
    for conv, enc in zip(conversations, encoded):
        sampler = prefix_sampler(conv, tokenizer, template, masking, encoded=enc)
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


# ---------------------------------------------------------------- report


def build_report(
    settings: dict[str, Any],
    stats: LoadStats,
    lengths: Sequence[int],
    trainable: Sequence[int],
    truncated: Sequence[bool],
    dropped: Sequence[str],
) -> dict[str, Any]:
    """The data report: records read, kept, dropped by reason, truncated, token lengths, supervised share.

    Per-sample sequences cover every tokenized sample (kept and dropped) in input order.
    """
    kept = [i for i, reason in enumerate(dropped) if not reason]
    kept_lengths = np.array([lengths[i] for i in kept], dtype=np.int64)
    total = int(kept_lengths.sum())
    supervised = int(sum(trainable[i] for i in kept))
    drops = Counter(stats.invalid)
    drops.update(reason for reason in dropped if reason)
    percentiles = {}
    if len(kept_lengths):
        percentiles = {
            "min": int(kept_lengths.min()),
            "mean": round(float(kept_lengths.mean()), 1),
            **{f"p{q}": int(np.percentile(kept_lengths, q)) for q in (50, 90, 95, 99)},
            "max": int(kept_lengths.max()),
        }
    max_length = settings["model_max_length"]
    return {
        **settings,
        "records_read": stats.read,
        "samples_kept": len(kept),
        "dropped": dict(sorted(drops.items())),
        "truncated": int(sum(truncated[i] for i in kept)),
        "tokens": total,
        "trainable_tokens": supervised,
        "trainable_share": round(supervised / total, 4) if total else 0.0,
        "length": percentiles,
        # What padding every sample to model_max_length (the official collation) would waste.
        "static_padding_share": round(1 - total / (len(kept) * max_length), 4) if kept else 0.0,
    }


def format_report(report: dict[str, Any]) -> str:
    """A short table of the report for the console."""
    length = report.get("length") or {}
    rows = [
        ("records read", report["records_read"]),
        ("samples kept", report["samples_kept"]),
        *((f"dropped: {reason}", n) for reason, n in report["dropped"].items()),
        (f"truncated to {report['model_max_length']}", report["truncated"]),
        ("tokens", report["tokens"]),
        ("trainable share", f"{report['trainable_share']:.1%}"),
        ("length p50/p90/p99/max", "/".join(str(length.get(k, "-")) for k in ("p50", "p90", "p99", "max"))),
        ("padding if padded to max", f"{report['static_padding_share']:.1%}"),
    ]
    if "packing_efficiency" in report:
        rows.append(("packing efficiency", f"{report['packing_efficiency']:.1%}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def format_sample(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> str:
    """One sample decoded for a human: the input, then the labels with each masked run shown as ⟦-100 ×n⟧."""
    parts: list[str] = []
    run: list[int] = []
    masked_run = 0
    for label in labels:
        if label == IGNORE_INDEX:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            masked_run += 1
        else:
            if masked_run:
                parts.append(f"⟦-100 ×{masked_run}⟧")
                masked_run = 0
            run.append(label)
    if run:
        parts.append(tokenizer.decode(run))
    if masked_run:
        parts.append(f"⟦-100 ×{masked_run}⟧")
    return (
        f"input_ids ({len(input_ids)} tokens): {tokenizer.decode(list(input_ids))}\n"
        f"labels ({trainable_tokens(labels)} trainable): {''.join(parts)}"
    )


# ---------------------------------------------------------------- entry point


def build_dataset(
    tokenizer: Any,
    data_path: str | Sequence[str],
    template: str | None = None,
    model_max_length: int = 512,
    truncation: Truncation | str = Truncation.TURNS,
    masking: Masking | str = Masking.ALL_TURNS,
    skip_invalid: bool = False,
    fmt: str | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
    model_type: str | None = None,
):
    """Tokenized training samples and the data report.

    Returns ``(dataset, report)``: a `datasets.Dataset` with columns ``id``, ``input_ids``, ``labels`` (unpadded,
    in input order, only samples with a trainable token) and ``length``; and the report dict (see
    `build_report`; ``report["cache"]`` says "hit" or "miss"). ``template`` None picks baichuan2 for Baichuan
    models (``model_type`` or the tokenizer class) and the tokenizer's chat template otherwise.
    ``cache_dir`` None turns caching off. Raises `DataError` on bad data unless ``skip_invalid``.
    """
    import datasets

    truncation, masking = Truncation(truncation), Masking(masking)
    template = resolve_template(template, tokenizer, model_type)
    sources = resolve_data_files(data_path)
    settings = {
        "data_path": list(sources),
        "format": fmt,
        "template": template,
        "model_max_length": model_max_length,
        "truncation": truncation.value,
        "masking": masking.value,
        "skip_invalid": skip_invalid,
    }
    cached = None
    if cache_dir is not None:
        cached = Path(cache_dir) / cache_key(settings, sources, tokenizer)
        if (cached / "report.json").is_file():
            report = json.loads((cached / "report.json").read_text(encoding="utf-8"))
            return datasets.load_from_disk(str(cached / "dataset")), {**report, "cache": "hit"}

    stats = LoadStats()
    conversations = load_conversations(sources, fmt=fmt, skip_invalid=skip_invalid, stats=stats)
    raw = datasets.Dataset.from_dict(
        {
            "id": [c.id for c in conversations],
            "system": [c.system for c in conversations],
            "roles": [[m.role for m in c.messages] for c in conversations],
            "contents": [[m.content for m in c.messages] for c in conversations],
        }
    )
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
    report = build_report(
        settings, stats, meta["length"], meta["trainable"], meta["truncated"], meta["dropped"]
    )
    dataset = tokenized.filter(
        lambda reasons: [not r for r in reasons], input_columns="dropped", batched=True
    )
    dataset = dataset.remove_columns(["trainable", "truncated", "dropped"])
    if cached is not None:
        dataset = _save(dataset, report, cached)
    return dataset, {**report, "cache": "miss" if cached is not None else "off"}


def _save(dataset, report: dict[str, Any], target: Path):
    """Write dataset and report to ``target`` atomically (a crash leaves no half cache) and reload from there."""
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        dataset.save_to_disk(str(tmp / "dataset"))
        write_report(report, tmp / "report.json")
        if target.exists():  # another process finished the same key first; its copy is identical
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target / "dataset"))
