"""Small helpers shared by test modules: paths, free ports, data records."""

from __future__ import annotations

import json
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for a launcher's master port or a test server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def official(*turns: tuple[str, str], id: str = "1") -> dict:
    """A record in the official (BELLE/ShareGPT) format: ``official(("human", "hi"), ("gpt", "yo"))``."""
    return {"id": id, "conversations": [{"from": role, "value": text} for role, text in turns]}


def write_records(path: Path, records) -> str:
    """A .json data file holding ``records``; returns its path as a string (as the tools take it)."""
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return str(path)
