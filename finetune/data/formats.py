"""Read chat data in several formats into one `Conversation` type, validating every record.

Formats (detected per file from the first record, or forced with `fmt`):
- ``sharegpt``: ``{"id", "conversations": [{"from", "value"}]}`` — the official Baichuan2 / BELLE format and
  its ShareGPT variants (``system`` turns, ``user``/``assistant`` role names).
- ``openai``: ``{"messages": [{"role", "content"}]}`` (optional ``id``).
- ``alpaca``: ``{"instruction", "input", "output"}`` with optional ``history`` ([[user, assistant], ...]),
  ``system`` and ``id``.

Files: ``.json`` (a list of records), ``.jsonl``, ``.parquet``; a directory (every such file below it) or a glob;
several of these as a list or comma-separated. A string naming no local path is tried as a Hugging Face dataset
name through ``datasets.load_dataset`` (needs network access or a local datasets cache).

Any problem in a file or record raises `DataError` with one line naming the file, the record and the problem.
With ``skip_invalid`` a bad record is dropped instead and counted by reason; problems with a whole file
(missing, empty, not JSON, wrong top-level type) always stop.
"""

from __future__ import annotations

import codecs
import glob
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.exits import first_line

FORMATS = ("sharegpt", "openai", "alpaca")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")

# Role names accepted in ShareGPT/OpenAI records, mapped to the three roles the templates know.
# The official script treats every `from` other than "human" as the assistant; we accept the names
# used by BELLE, ShareGPT dumps and OpenAI and reject anything else, so a typo cannot flip a user turn
# into a supervised one.
ROLE_NAMES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}

_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class DataError(Exception):
    """A data file or record cannot be used. The message is one line: file, record, problem.

    `reason` is the short problem description, used to count records dropped with ``skip_invalid``.
    """

    def __init__(self, source: str, problem: str, where: str | None = None, reason: str | None = None):
        self.source = source
        self.problem = problem
        self.where = where
        self.reason = reason or problem
        located = f"{source}, {where}" if where else source
        super().__init__(f"{located}: {problem}")

    def __reduce__(self):
        # Rebuilt from its parts when a `datasets.map` worker process raises it.
        return DataError, (self.source, self.problem, self.where, self.reason)


class _BadRecord(ValueError):
    """A record-level problem; `reason` is its category, the message its detail."""

    def __init__(self, reason: str, detail: str | None = None):
        self.reason = reason
        super().__init__(detail or reason)


@dataclass(frozen=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    system: str | None = None
    id: str | None = None

    def to_openai(self) -> list[dict[str, str]]:
        """The conversation as OpenAI-style messages (system first), the input of chat templates."""
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + [{"role": m.role, "content": m.content} for m in self.messages]


@dataclass
class _Record:
    """One raw record with where it came from, for error messages."""

    data: Any
    source: str
    where: str


@dataclass
class LoadStats:
    """What `load_conversations` read and dropped; filled in when passed."""

    read: int = 0
    invalid: Counter = field(default_factory=Counter)


# ---------------------------------------------------------------- paths


def resolve_data_files(paths: str | Sequence[str]) -> list[str]:
    """Expand files, directories, globs and comma-separated lists into an ordered list of sources.

    Local files come back as paths; a string that names no local path and looks like ``owner/name``
    comes back unchanged, to be loaded as a Hugging Face dataset.
    """
    items = [p.strip() for p in paths.split(",")] if isinstance(paths, str) else [str(p) for p in paths]
    sources: list[str] = []
    for item in items:
        if not item:
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
            if not found:
                raise DataError(item, "directory holds no .json, .jsonl or .parquet file")
            sources.extend(found)
        elif path.exists():
            sources.append(str(path))
        elif glob.has_magic(item):
            found = sorted(
                p for p in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(p)
            )
            if not found:
                raise DataError(item, "no file matches this pattern")
            sources.extend(found)
        elif path.suffix in DATA_SUFFIXES or not _HUB_NAME.match(item):
            raise DataError(item, "no such file or directory")
        else:
            sources.append(item)
    if not sources:
        raise DataError(str(paths), "no data path given")
    return sources


def data_files_signature(sources: Sequence[str]) -> list[list[Any]]:
    """Path, size and mtime of each local source (a hub name stands for itself): the data part of a cache key."""
    signature = []
    for source in sources:
        if os.path.isfile(source):
            stat = os.stat(source)
            signature.append([os.path.abspath(source), stat.st_size, stat.st_mtime_ns])
        else:
            signature.append([source])
    return signature


# ---------------------------------------------------------------- raw records


# Files are read in chunks of this many bytes, so a corpus never has to fit in memory as text or Python objects.
CHUNK_BYTES = 1 << 20
# A JSON record that does not parse is read further (it may continue in the next chunk) up to this many
# characters; past it the parse error is reported as it is.
MAX_RECORD_CHARS = 1 << 28
_JSON_SPACE = " \t\n\r"


def _open_binary(path: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror})") from None


def _text_chunks(path: str) -> Iterator[str]:
    """The file as UTF-8 text (a leading BOM dropped), in chunks; a bad byte is a `DataError` naming its offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open_binary(path) as f:
        while True:
            try:
                data = f.read(CHUNK_BYTES)
            except OSError as e:
                raise DataError(path, f"cannot read file ({e.strerror})") from None
            if offset == 0 and data.startswith(codecs.BOM_UTF8):
                data, offset = data[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                bad = offset - pending + e.start
                raise DataError(path, f"not UTF-8 text (bad byte at offset {bad})") from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


class _JsonText:
    """A window on a file's text that the JSON list reader moves through: it reads chunks as needed, drops what
    was parsed, and knows the line and column of any position (for error messages)."""

    def __init__(self, path: str):
        self.path = path
        self._chunks = _text_chunks(path)
        self.text = ""
        self.pos = 0
        self.eof = False
        self._line = 1  # line of text[0]
        self._column = 0  # characters before text[0] on that line

    def more(self) -> bool:
        """Read the next chunk; False at the end of the file."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.eof = True
            return False
        self.text += chunk
        return True

    def compact(self) -> None:
        """Drop the text before the position once there is a chunk of it."""
        if self.pos > CHUNK_BYTES:
            done = self.text[: self.pos]
            newline = done.rfind("\n")
            self._line += done.count("\n")
            self._column = len(done) - newline - 1 if newline >= 0 else self._column + len(done)
            self.text, self.pos = self.text[self.pos :], 0

    def skip_space(self) -> str | None:
        """The next character that is not JSON whitespace (not consumed), or None at the end of the file."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _JSON_SPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return None

    def rest(self) -> str:
        return self.text[self.pos :] + "".join(self._chunks)

    def error(self, message: str, pos: int | None = None) -> DataError:
        pos = self.pos if pos is None else pos
        newline = self.text.rfind("\n", 0, pos)
        line = self._line + self.text.count("\n", 0, pos)
        column = pos - newline if newline >= 0 else self._column + pos + 1
        return DataError(self.path, f"not valid JSON ({message} at line {line} column {column})")


_DECODER = json.JSONDecoder()


def _json_value(window: _JsonText) -> Any:
    """Decode the JSON value at the window's position (reading further while it may be cut by a chunk's end)."""
    while True:
        try:
            value, end = _DECODER.raw_decode(window.text, window.pos)
        except json.JSONDecodeError as e:
            if window.eof or len(window.text) - window.pos > MAX_RECORD_CHARS or not window.more():
                raise window.error(e.msg, e.pos) from None
            continue
        # A number or literal at the very end of the text may continue in the next chunk.
        if end == len(window.text) and not window.eof and window.more():
            continue
        window.pos = end
        return value


def _json_records(path: str) -> Iterator[_Record]:
    """The records of a JSON file holding a list, parsed one at a time from chunks of the file."""
    if os.path.getsize(path) == 0:
        raise DataError(path, "file is empty")
    window = _JsonText(path)
    first = window.skip_space()
    if first is None:
        raise DataError(path, "file is empty")
    if first != "[":
        _not_a_list(path, window.rest())
    window.pos += 1
    count = 0
    while True:
        char = window.skip_space()
        if count == 0 and char == "]":
            window.pos += 1
            break
        if char is None:
            raise window.error("Expecting value")
        yield _Record(_json_value(window), path, f"record {count}")
        count += 1
        window.compact()
        char = window.skip_space()
        if char == "]":
            window.pos += 1
            break
        if char != ",":
            raise window.error("Expecting ',' delimiter")
        window.pos += 1
    if window.skip_space() is not None:
        raise window.error("Extra data")
    if count == 0:
        raise DataError(path, "holds no records")


def _not_a_list(path: str, text: str) -> None:
    """Raise the `DataError` for a JSON file whose top level is not a list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if isinstance(data, dict):
        raise DataError(path, "top level is an object; expected a list of records (or use .jsonl)")
    raise DataError(path, f"top level is {_type_name(data)}; expected a list of records")


def _jsonl_records(path: str) -> Iterator[_Record]:
    offset, seen = 0, False
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw, start = raw[len(codecs.BOM_UTF8) :], start + len(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not UTF-8 text (bad byte at offset {start + e.start})") from None
            if not line.strip():
                continue
            seen = True
            where = f"line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problem = f"broken JSON line ({e.msg} at column {e.colno})"
                yield _Record(DataError(path, problem, where, reason="broken JSON line"), path, where)
                continue
            yield _Record(record, path, where)
    if not seen:
        raise DataError(path, "file is empty")


def _parquet_records(path: str) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    if os.path.getsize(path) == 0:
        raise DataError(path, "file is empty")
    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=1024)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(path, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    if parquet.metadata.num_rows == 0:
        raise DataError(path, "holds no records")
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:
            raise DataError(path, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
        if batch is None:
            return
        yield from _parquet_rows(batch, path, row)
        row += batch.num_rows


def _parquet_rows(batch, path: str, start: int) -> Iterator[_Record]:
    """A record batch's rows as dicts. A string column holding bytes that are not UTF-8 (a lone surrogate a
    scraper wrote as CESU-8) makes pyarrow fail the whole conversion; such a batch is converted row by row so that
    only the bad row is a (skippable) record error."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except UnicodeDecodeError as e:
                problem = (
                    f"not valid UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset {e.start})"
                )
                rows.append(DataError(path, problem, f"row {start + i}", reason="invalid Unicode"))
    for i, row in enumerate(rows):
        yield _Record(row, path, f"row {start + i}")


def _hub_records(name: str) -> Iterator[_Record]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, unknown name, gated: all end the same way for the user
        first = first_line(e)
        raise DataError(
            name, f"not a local path, and loading it as a Hugging Face dataset failed ({first})"
        ) from None
    for i, record in enumerate(ds):
        yield _Record(record, name, f"row {i}")


def _raw_records(source: str) -> Iterator[_Record]:
    if not os.path.exists(source):
        yield from _hub_records(source)
        return
    suffix = Path(source).suffix
    if suffix == ".jsonl":
        yield from _jsonl_records(source)
    elif suffix == ".parquet":
        yield from _parquet_records(source)
    elif suffix == ".json":
        yield from _json_records(source)
    else:
        raise DataError(source, f"unknown file type {suffix or '(no suffix)'}; use .json, .jsonl or .parquet")


# ---------------------------------------------------------------- record parsers


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _BadRecord("text is not a string", f"{what} is {_type_name(value)}, not a string")
    _require_unicode(value, what)
    return value


def _require_unicode(value: str, what: str) -> None:
    """JSON may escape half of a surrogate pair ("\\ud83d", an emoji cut in two, common in scraped ShareGPT
    dumps); Python keeps it, but no UTF-8 writer (pyarrow, the tokenizer) can."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _BadRecord(
            "invalid Unicode",
            f"{what} holds a lone surrogate {ascii(value[e.start])} at character {e.start} (half of an emoji?)",
        ) from None


def _record_id(record: dict) -> str | None:
    value = record.get("id")
    if value is None:
        return None
    _require_unicode(str(value), '"id"')
    return str(value)


def _build(turns: Iterable[tuple[str, str]], record: dict, system: str | None = None) -> Conversation:
    """Validate (role, text) turns — roles already mapped — and build the conversation."""
    messages: list[Message] = []
    for i, (role, text) in enumerate(turns):
        if role == "system":
            if i != 0:
                raise _BadRecord("system turn not first", f"message {i}: system turn is only allowed first")
            system = text
            continue
        messages.append(Message(role, text))
    if not messages:
        raise _BadRecord("empty conversation")
    if not any(m.role == "assistant" for m in messages):
        raise _BadRecord("no assistant turn")
    return Conversation(tuple(messages), system, _record_id(record))


def _role(name: Any, i: int) -> str:
    if not isinstance(name, str) or name.lower() not in ROLE_NAMES:
        raise _BadRecord(
            "unknown role", f"message {i}: unknown role {name!r} (known: {', '.join(ROLE_NAMES)})"
        )
    return ROLE_NAMES[name.lower()]


def _parse_turns(record: dict, list_key: str, role_key: str, text_key: str) -> Conversation:
    turns = record.get(list_key)
    if turns is None:
        raise _BadRecord("missing key", f'missing key "{list_key}"')
    if not isinstance(turns, list):
        raise _BadRecord("wrong type", f'"{list_key}" is {_type_name(turns)}, not a list')
    parsed = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _BadRecord("wrong type", f"message {i} is {_type_name(turn)}, not an object")
        for key in (role_key, text_key):
            if key not in turn:
                raise _BadRecord("missing key", f'message {i}: missing key "{key}"')
        parsed.append((_role(turn[role_key], i), _string(turn[text_key], f'message {i}: "{text_key}"')))
    return _build(parsed, record)


def parse_sharegpt(record: dict) -> Conversation:
    return _parse_turns(record, "conversations", "from", "value")


def parse_openai(record: dict) -> Conversation:
    return _parse_turns(record, "messages", "role", "content")


def parse_alpaca(record: dict) -> Conversation:
    for key in ("instruction", "output"):
        if key not in record:
            raise _BadRecord("missing key", f'missing key "{key}"')
    instruction = _string(record["instruction"], '"instruction"')
    extra = record.get("input") or ""
    extra = _string(extra, '"input"')
    prompt = f"{instruction}\n{extra}" if extra else instruction
    turns: list[tuple[str, str]] = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise _BadRecord("wrong type", f'"history" is {_type_name(history)}, not a list')
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise _BadRecord("wrong type", f"history[{i}] is not a [user, assistant] pair")
        turns += [
            ("user", _string(pair[0], f"history[{i}][0]")),
            ("assistant", _string(pair[1], f"history[{i}][1]")),
        ]
    turns += [("user", prompt), ("assistant", _string(record["output"], '"output"'))]
    system = record.get("system")
    if system is not None:
        system = _string(system, '"system"') or None
    return _build(turns, record, system)


PARSERS = {"sharegpt": parse_sharegpt, "openai": parse_openai, "alpaca": parse_alpaca}


def detect_format(record: Any) -> str | None:
    """The format a record is written in, from its keys; None when no format matches."""
    if not isinstance(record, dict):
        return None
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "instruction" in record:
        return "alpaca"
    return None


# ---------------------------------------------------------------- entry point


def iter_conversations(
    paths: str | Sequence[str],
    fmt: str | None = None,
    skip_invalid: bool = False,
    stats: LoadStats | None = None,
) -> Iterator[Conversation]:
    """Read every record of every source, in order, as `Conversation`s, one at a time (files are read in chunks,
    so a corpus of any size passes through in bounded memory).

    ``fmt`` forces one of `FORMATS`; otherwise (None or "auto") each file's format is detected from its first
    record.
    Raises `DataError` on the first bad record, or with ``skip_invalid`` drops bad records and counts them
    by reason in ``stats.invalid``.
    """
    fmt = None if fmt == "auto" else fmt
    if fmt is not None and fmt not in PARSERS:
        raise DataError("--format", f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    stats = stats if stats is not None else LoadStats()
    for source in resolve_data_files(paths):
        file_fmt = fmt
        for record in _raw_records(source):
            stats.read += 1
            try:
                conversation = _parse_record(record, file_fmt)
            except DataError as e:
                if not skip_invalid:
                    raise
                stats.invalid[e.reason] += 1
                continue
            if file_fmt is None:
                file_fmt = detect_format(record.data)
            yield conversation


def load_conversations(
    paths: str | Sequence[str],
    fmt: str | None = None,
    skip_invalid: bool = False,
    stats: LoadStats | None = None,
) -> list[Conversation]:
    """`iter_conversations` as a list."""
    return list(iter_conversations(paths, fmt, skip_invalid, stats))


def _parse_record(record: _Record, fmt: str | None) -> Conversation:
    if isinstance(record.data, DataError):
        raise record.data
    if not isinstance(record.data, dict):
        problem = f"record is {_type_name(record.data)}, not an object"
        raise DataError(record.source, problem, record.where, reason="wrong type")
    fmt = fmt or detect_format(record.data)
    if fmt is None:
        keys = ", ".join(sorted(record.data)) or "none"
        raise DataError(
            record.source,
            f'unknown record format (keys: {keys}); expected "conversations", "messages" or "instruction"',
            record.where,
            reason="unknown record format",
        )
    try:
        return PARSERS[fmt](record.data)
    except _BadRecord as e:
        raise DataError(record.source, str(e), record.where, reason=e.reason) from None
