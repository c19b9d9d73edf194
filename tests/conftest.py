"""Fixtures every test module shares: the tiny Baichuan2 checkpoints, the repository root as working directory,
a data cache of the session's own, and the process-wide state that training code leaves behind, cleared after
every test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import DATA, ROOT, write_records

from finetune.data.cache import CACHE_ENV
from finetune.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """The tools' default data cache, for this session only (never the user's ~/.cache); launched runs inherit
    it through the environment."""
    path = tmp_path_factory.mktemp("data-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(path))
        yield path


@pytest.fixture(scope="session")
def tiny7b(tmp_path_factory):
    """A tiny random Baichuan2-7B (RoPE) in the official 7B layout (one pytorch_model.bin). Read-only: a test
    that changes files copies it first."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "7b", arch="7b", seed=0)


@pytest.fixture(scope="session")
def tiny13b(tmp_path_factory):
    """A tiny random Baichuan2-13B (ALiBi, 5 heads: not a power of two) in the official 13B layout (shards)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "13b", arch="13b", seed=0, fmt="sharded")


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory):
    """The first 16 conversations of data/sample_chat.json: at 128 tokens each, one packed row per rank-step."""
    records = json.loads((DATA / "sample_chat.json").read_text(encoding="utf-8"))[:16]
    return Path(write_records(tmp_path_factory.mktemp("data") / "chat.json", records))


@pytest.fixture
def in_repo_root(monkeypatch):
    """Relative paths in commands and recipes (ds_configs/, data/) resolve as in the README."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Parsing training arguments builds accelerate's process state and, with a ZeRO-3 config, transformers'
    global DeepSpeed config (which makes from_pretrained partition); no later test may see either."""
    yield
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(reset_partial_state=True)
