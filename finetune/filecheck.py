"""Cheap integrity checks of the files a model directory or checkpoint is made of, reading headers and
archive directories only: a truncated or corrupt file is named before any library trips over it with an error
that names nothing (a bare `EOFError`, "expected str, bytes or os.PathLike object, not int", a gloo timeout).

Each check returns None for a sound file, else a short phrase saying what is wrong with it.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from finetune.jsonfile import read_json

# safetensors: 8-byte little-endian header length, the JSON header, then the tensor bytes.
_SAFETENSORS_HEADER_LIMIT = 100_000_000  # the format's own cap on the header size


def safetensors_problem(path: str | Path) -> str | None:
    """The header must parse and the file must be exactly as long as its last tensor's end."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    if size < 8:
        return f"truncated ({size} bytes)"
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > _SAFETENSORS_HEADER_LIMIT or 8 + length > size:
            return f"truncated or not a safetensors file ({size} bytes, header claims {length})"
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "corrupt safetensors header"
    if not isinstance(header, dict):
        return "corrupt safetensors header"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return (
            f"truncated ({size} of {expected} bytes)"
            if size < expected
            else f"corrupt ({size} bytes, expected {expected})"
        )
    return None


def torch_file_problem(path: str | Path) -> str | None:
    """`torch.save` files (weights, optimizer, scheduler, RNG state, ZeRO shards) are zip archives: their
    directory sits at the end, so a truncated file has none. Every member must lie inside the file."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        # torch.save's pre-1.6 format is a bare pickle (protocol marker 0x80): readable, not checkable here.
        with open(path, "rb") as f:
            if f.read(1) == b"\x80":
                return None
        return f"truncated or corrupt ({size} bytes, not a complete PyTorch archive)"
    if not members:
        return "corrupt (an empty archive)"
    end = max(m.header_offset + m.compress_size for m in members)
    if end > size:
        return f"truncated ({size} bytes, its directory refers to byte {end})"
    return None


def json_problem(path: str | Path) -> str | None:
    path = Path(path)
    try:
        read_json(path)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    return None


def file_problem(path: str | Path) -> str | None:
    """The check for this kind of file, by name; None for kinds not checked."""
    name = Path(path).name
    if name.endswith(".safetensors"):
        return safetensors_problem(path)
    if name.endswith((".bin", ".pt", ".pth")):
        return torch_file_problem(path)
    if name.endswith(".json"):
        return json_problem(path)
    return None
