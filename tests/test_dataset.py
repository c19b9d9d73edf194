"""Truncation policies, drops, the data report, num_proc, and the tokenized-data cache: its keys and location."""

from dataclasses import replace
from pathlib import Path

import pytest
from fakes import CHATML, CharTokenizer, ids, official_sample
from helpers import official, write_records

import finetune.data.dataset as dataset_module
from finetune.data.dataset import Truncation, build_dataset, fit_sample, samples_key
from finetune.data.formats import Conversation, DataError, Message
from finetune.data.options import DataOptions
from finetune.data.report import format_sample, trainable_tokens
from finetune.data.templates import TEMPLATES

X = -100


def conv(*turns):
    return Conversation(tuple(Message(r, c) for r, c in turns))


def fit(c, max_length, policy=Truncation.TURNS):
    sampler = TEMPLATES["baichuan2"].sampler(c, CharTokenizer())
    return fit_sample(sampler, [m.role for m in c.messages], max_length, policy)


# [195 a b 196 c d e 195 f 196 g h 2] — 13 tokens
C = conv(("user", "ab"), ("assistant", "cde"), ("user", "f"), ("assistant", "gh"))


def test_sample_that_fits_is_untouched():
    input_ids, labels, truncated = fit(C, 13)
    assert (input_ids, labels, truncated) == (*official_sample(CharTokenizer(), _record(C)), False)


def test_turns_policy_keeps_whole_turns_and_the_eos_after_the_last_kept_reply():
    input_ids, labels, truncated = fit(C, 12)
    assert truncated
    assert input_ids == [195, *ids("ab"), 196, *ids("cde"), 2]
    assert labels == [2, X, X, X, *ids("cde"), 2]


def test_turns_policy_cuts_the_first_reply_only_when_it_does_not_fit_and_gives_it_no_eos():
    input_ids, labels, truncated = fit(C, 6)
    assert truncated
    assert input_ids == [195, *ids("ab"), 196, *ids("cd")]
    assert labels == [2, X, X, X, *ids("cd")]


def test_official_policy_is_the_head_cut():
    for n in (3, 6, 9, 12):
        assert fit(C, n, Truncation.OFFICIAL)[:2] == official_sample(CharTokenizer(), _record(C), n)


def test_trainable_tokens_ignores_position_zero():
    assert trainable_tokens([2, X, X]) == 0
    assert trainable_tokens([2, X, 7, 2]) == 2


def _record(c):
    return {
        "conversations": [
            {"from": "human" if m.role == "user" else "gpt", "value": m.content} for m in c.messages
        ]
    }


def test_build_dataset_drops_untrainable_samples_and_reports(tmp_path):
    records = [
        official(("human", "hi"), ("gpt", "hello"), id="a"),
        official(("human", "x" * 100_000), ("gpt", "ok"), id="long-prompt"),
        official(("human", "q"), ("gpt", "r" * 50), ("human", "q2"), ("gpt", "r2"), id="cut"),
        official(("human", "q"), ("robot", "r"), id="bad-role"),
    ]
    path = write_records(tmp_path / "d.json", records)
    options = DataOptions(data_path=[path], template="baichuan2", skip_invalid=True)
    ds, report = build_dataset(CharTokenizer(), options, 32, cache_dir=None)
    assert ds["id"] == ["a", "cut"]
    assert ds[0]["input_ids"] == [195, *ids("hi"), 196, *ids("hello"), 2]
    assert report.records_read == 4
    assert report.samples_kept == 2
    assert report.dropped == {"no trainable token within model_max_length": 1, "unknown role": 1}
    assert report.truncated == 1
    assert report.tokens == sum(ds["length"]) == sum(len(x) for x in ds["input_ids"])
    assert report.trainable_tokens == sum(trainable_tokens(x) for x in ds["labels"])
    assert report.length["max"] == 32
    assert report.cache == "off"
    with pytest.raises(DataError, match=r"d\.json, record 3: message 1: unknown role 'robot'"):
        build_dataset(
            CharTokenizer(), DataOptions(data_path=[path], template="baichuan2"), 32, cache_dir=None
        )


def test_second_run_hits_the_cache_and_does_no_tokenizing(tmp_path, monkeypatch):
    path = write_records(
        tmp_path / "d.json", [official(("human", "hi"), ("gpt", "yo"), id=str(i)) for i in range(5)]
    )
    options = DataOptions(data_path=[path], template="baichuan2")
    kwargs = dict(model_max_length=64, cache_dir=tmp_path / "cache")
    first, report = build_dataset(CharTokenizer(), options, **kwargs)
    assert report.cache == "miss"

    def no_tokenizing(*args, **kw):
        raise AssertionError("tokenized on a cache hit")

    monkeypatch.setattr(dataset_module, "tokenize_batch", no_tokenizing)
    second, report2 = build_dataset(CharTokenizer(), options, **kwargs)
    assert report2.cache == "hit"
    assert second.to_dict() == first.to_dict()
    # The hit's report is the build's, with the time and memory of loading it added.
    assert set(report2.stages) == {"read", "tokenize", "load"}
    report2.stages.pop("load")
    assert {**report2.to_dict(), "cache": "miss"} == report.to_dict()
    # Any input of the key changing is a miss: here the max length, then the file itself.
    with pytest.raises(AssertionError, match="tokenized on a cache hit"):
        build_dataset(CharTokenizer(), options, **{**kwargs, "model_max_length": 63})
    Path(path).write_text(Path(path).read_text(encoding="utf-8") + " ", encoding="utf-8")
    with pytest.raises(AssertionError, match="tokenized on a cache hit"):
        build_dataset(CharTokenizer(), options, **kwargs)


def test_num_proc_gives_the_same_dataset(tmp_path):
    records = [
        official(
            ("human", f"问题{i}"), ("gpt", "答" * (i % 40)), ("human", "再说"), ("gpt", f"好{i}"), id=str(i)
        )
        for i in range(600)
    ]
    path = write_records(tmp_path / "d.json", records)
    options = DataOptions(data_path=[path], template="baichuan2")
    one, _ = build_dataset(CharTokenizer(), options, 30, cache_dir=None)
    two_workers = DataOptions(data_path=[path], template="baichuan2", preprocessing_num_workers=2)
    two, _ = build_dataset(CharTokenizer(), two_workers, 30, cache_dir=None)
    assert one.to_dict() == two.to_dict()
    assert one["id"] == [str(i) for i in range(600)]


def test_format_sample_shows_masked_spans():
    tokenizer = CharTokenizer()
    text = format_sample(tokenizer, [195, *ids("hi"), 196, *ids("yo"), 2], [2, X, X, X, *ids("yo"), 2])
    assert text.splitlines() == [
        "input_ids (7 tokens): <reserved_106>hi<reserved_107>yo</s>",
        "labels (3 trainable): </s>⟦-100 ×3⟧yo</s>",
    ]


# ---------------------------------------------------------------- cache keys and location


def test_the_samples_key_changes_with_every_input_that_changes_the_samples(tmp_path, monkeypatch):
    import finetune.data.cache as cache

    path = write_records(tmp_path / "d.json", [official(("human", "hi"), ("gpt", "yo"))])
    other = write_records(tmp_path / "e.json", [official(("human", "hi"), ("gpt", "yo"))])
    base = DataOptions(data_path=[path], template="baichuan2")

    def key(options=base, tokenizer=None, max_length=64):
        return samples_key(tokenizer or CharTokenizer(chat_template=CHATML), options, max_length)

    first = key()
    assert key() == first  # nothing changed, same key
    keys = {
        "template": key(replace(base, template="chat_template")),
        "truncation": key(replace(base, truncation="official")),
        "masking": key(replace(base, mask="last_assistant")),
        "max length": key(max_length=63),
        "format": key(replace(base, data_format="sharegpt")),
        "skip invalid": key(replace(base, skip_invalid=True)),
        "tokenizer": key(tokenizer=CharTokenizer(chat_template=CHATML + " ")),
        "more files": key(replace(base, data_path=[path, other])),
    }
    Path(path).write_text(Path(path).read_text(encoding="utf-8") + " ", encoding="utf-8")
    keys["data file changed"] = key()
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "another version of finetune/data")
    keys["code"] = key()
    assert len({first, *keys.values()}) == len(keys) + 1, keys


def test_cache_location_flag_env_and_default(monkeypatch, tmp_path):
    from finetune.data.cache import CACHE_ENV, resolve_cache_dir

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir(None) == tmp_path / "env"
    assert resolve_cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_cache_dir("none") is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(None) == tmp_path / "xdg" / "baichuan2-sft" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_cache_dir(None) == Path.home() / ".cache" / "baichuan2-sft" / "data"


def test_an_unwritable_cache_is_one_line_and_a_filled_one_still_serves(tmp_path, monkeypatch):
    import tempfile

    path = write_records(tmp_path / "d.json", [official(("human", "hi"), ("gpt", "yo"))])
    options = DataOptions(data_path=[path], template="baichuan2")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(DataError) as error:
        build_dataset(CharTokenizer(), options, 64, cache_dir=blocked / "cache")
    assert str(error.value) == (
        f"{blocked / 'cache'}: cannot write the data cache here (Not a directory); give a writable directory "
        "with --data_cache_dir or BAICHUAN2_SFT_DATA_CACHE"
    )
    filled = tmp_path / "filled"
    build_dataset(CharTokenizer(), options, 64, cache_dir=filled)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)  # what building an entry would need first
    ds, report = build_dataset(CharTokenizer(), options, 64, cache_dir=filled)
    assert report.cache == "hit" and len(ds) == 1
