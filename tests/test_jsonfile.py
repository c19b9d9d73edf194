"""The one JSON writer: readable UTF-8, sorted keys on request, and atomic (a failed write leaves the old file)."""

import json
import os
import stat

import pytest

from finetune import jsonfile
from finetune.jsonfile import read_json, write_json


def test_text_is_readable_and_keys_sorted_on_request(tmp_path):
    path = write_json(tmp_path / "sub" / "a.json", {"b": "你好", "a": 1}, sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{\n  "a": 1,\n  "b": "你好"\n}\n'
    assert read_json(path) == {"a": 1, "b": "你好"}
    assert list(read_json(write_json(tmp_path / "b.json", {"b": 1, "a": 2}))) == ["b", "a"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_json(tmp_path / "config.json", {"old": True})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jsonfile.os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json(path, {"new": True})
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_mode_follows_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "config.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
