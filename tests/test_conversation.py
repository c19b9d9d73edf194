"""Formats → Conversation, file/dir/glob resolution, and one-line validation errors."""

import json
import pickle
from collections import Counter
from pathlib import Path

import pytest
from helpers import DATA, official

from finetune.data.formats import (
    Conversation,
    DataError,
    LoadStats,
    Message,
    load_conversations,
    resolve_data_files,
)


def write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- formats


def test_official_format_maps_human_and_gpt():
    convs = load_conversations(str(DATA / "sample_chat.json"))
    assert len(convs) == 64
    assert convs[0].id == "10001" and convs[0].system is None
    raw = json.loads((DATA / "sample_chat.json").read_text(encoding="utf-8"))[0]["conversations"]
    assert [(m.role, m.content) for m in convs[0].messages] == [
        ({"human": "user", "gpt": "assistant"}[t["from"]], t["value"]) for t in raw
    ]


def test_sharegpt_variant_with_system_and_role_names():
    convs = load_conversations(str(DATA / "sample_system.json"))
    raw = json.loads((DATA / "sample_system.json").read_text(encoding="utf-8"))[0]["conversations"]
    assert convs[0].system == raw[0]["value"]
    assert [m.role for m in convs[0].messages] == [t["from"] for t in raw[1:]]


def test_openai_alpaca_sharegpt_jsonl_and_parquet():
    openai = load_conversations(str(DATA / "examples/openai.jsonl"))
    assert openai[0].system is not None and openai[1].system is None
    assert openai[0].id == "openai-1"
    alpaca = load_conversations(str(DATA / "examples/alpaca.json"))
    assert alpaca[0].messages == (
        Message(
            "user",
            "把下面的句子改写得更简洁。\n由于今天天气的原因，我们决定把原本计划在今天下午举行的户外活动推迟到明天下午再举行。",
        ),
        Message("assistant", "因天气原因，今天下午的户外活动推迟到明天下午。"),
    )
    with_history = alpaca[2]
    assert with_history.system == "你是一名数学老师，回答简短准确。"
    assert [m.role for m in with_history.messages] == ["user", "assistant", "user", "assistant"]
    assert with_history.messages[0].content == "144 除以 12 等于多少？"
    jsonl = load_conversations(str(DATA / "examples/sharegpt.jsonl"))
    parquet = load_conversations(str(DATA / "examples/sharegpt.parquet"))
    assert jsonl == parquet and len(jsonl) == 3


def test_format_detected_per_file_and_forced(tmp_path):
    a = write(tmp_path / "a.json", [official(("human", "q"), ("gpt", "a"))])
    b = write(
        tmp_path / "b.jsonl",
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    )
    convs = load_conversations([str(a), str(b)])
    assert convs[0].messages == convs[1].messages == (Message("user", "q"), Message("assistant", "a"))
    with pytest.raises(DataError, match=r'b\.jsonl, line 1: missing key "conversations"'):
        load_conversations([str(a), str(b)], fmt="sharegpt")
    with pytest.raises(DataError, match="unknown format 'belle'"):
        load_conversations(str(a), fmt="belle")


def test_to_openai_puts_system_first():
    conv = Conversation((Message("user", "q"), Message("assistant", "a")), system="s")
    assert conv.to_openai() == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


# ---------------------------------------------------------------- paths


def test_directory_glob_and_comma_list_resolve_in_sorted_order(tmp_path):
    for name in ("b.json", "a.jsonl", "sub/c.parquet", "notes.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    expected = [str(tmp_path / n) for n in ("a.jsonl", "b.json", "sub/c.parquet")]
    assert resolve_data_files(str(tmp_path)) == expected
    assert resolve_data_files(str(tmp_path / "*.json*")) == expected[:2]
    assert resolve_data_files(f"{expected[1]},{expected[0]}") == [expected[1], expected[0]]
    assert resolve_data_files("someone/some_dataset") == ["someone/some_dataset"]


def test_hub_name_that_cannot_load_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as e:
        load_conversations("no-such-owner/no-such-dataset-xyz")
    assert str(e.value).startswith("no-such-owner/no-such-dataset-xyz: not a local path")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- validation

GOOD = official(("human", "q"), ("gpt", "a"))

BAD = [
    ("not_json", "x.json", "[{oops", "x.json: not valid JSON"),
    ("top_level_object", "x.json", {"id": "1"}, "x.json: top level is an object"),
    ("top_level_string", "x.json", '"hello"', "x.json: top level is a string"),
    ("empty_list", "x.json", [], "x.json: holds no records"),
    ("record_not_object", "x.json", [GOOD, 7], "x.json, record 1: record is int, not an object"),
    ("unknown_format", "x.json", [{"text": "hi"}], "x.json, record 0: unknown record format (keys: text)"),
    (
        "missing_key",
        "x.json",
        [GOOD, {"id": "2", "conversations": [{"from": "human"}]}],
        'x.json, record 1: message 0: missing key "value"',
    ),
    (
        "unknown_role",
        "x.json",
        [official(("human", "q"), ("robot", "a"))],
        "x.json, record 0: message 1: unknown role 'robot'",
    ),
    (
        "non_string_text",
        "x.json",
        [official(("human", 5), ("gpt", "a"))],
        'x.json, record 0: message 0: "value" is int, not a string',
    ),
    (
        "null_text",
        "x.json",
        [official(("human", None), ("gpt", "a"))],
        'x.json, record 0: message 0: "value" is null, not a string',
    ),
    (
        "empty_conversation",
        "x.json",
        [{"id": "1", "conversations": []}],
        "x.json, record 0: empty conversation",
    ),
    ("no_assistant", "x.json", [official(("human", "q"))], "x.json, record 0: no assistant turn"),
    (
        "late_system",
        "x.json",
        [official(("human", "q"), ("system", "s"), ("gpt", "a"))],
        "x.json, record 0: message 1: system turn is only allowed first",
    ),
    ("broken_jsonl_line", "x.jsonl", json.dumps(GOOD) + "\n\n{broken\n", "x.jsonl, line 3: broken JSON line"),
    ("non_utf8", "x.json", b'[{"id": "\xff\xfe"}]', "x.json: not UTF-8 text (bad byte at offset 9)"),
    ("empty_file", "x.jsonl", "", "x.jsonl: file is empty"),
    ("alpaca_missing_output", "x.json", [{"instruction": "do"}], 'x.json, record 0: missing key "output"'),
    ("unknown_suffix", "x.csv", "a,b", "x.csv: unknown file type .csv"),
]


@pytest.mark.parametrize("name,filename,content,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_line_naming_file_record_and_problem(tmp_path, name, filename, content, expected):
    path = write(tmp_path / filename, content)
    with pytest.raises(DataError) as e:
        load_conversations(str(path))
    message = str(e.value)
    assert message.startswith(f"{tmp_path}/{expected}"), message
    assert "\n" not in message


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"missing\.json: no such file or directory$"):
        load_conversations(str(tmp_path / "missing.json"))


def test_skip_invalid_drops_and_counts_by_reason(tmp_path):
    lines = [
        json.dumps(GOOD),
        "{broken",
        json.dumps(official(("human", "q"), ("robot", "a"))),
        json.dumps(official(("human", "q"), ("wizard", "a"))),
        json.dumps(official(("human", "q"))),
        json.dumps(official(("human", "q2"), ("gpt", "a2"), id="2")),
    ]
    path = write(tmp_path / "mixed.jsonl", "\n".join(lines))
    stats = LoadStats()
    convs = load_conversations(str(path), skip_invalid=True, stats=stats)
    assert [c.id for c in convs] == ["1", "2"]
    assert stats.read == 6
    assert stats.invalid == Counter({"unknown role": 2, "broken JSON line": 1, "no assistant turn": 1})
    with pytest.raises(DataError, match="line 2: broken JSON line"):
        load_conversations(str(path))


def test_file_level_problems_stop_even_with_skip_invalid(tmp_path):
    path = write(tmp_path / "x.json", "[{oops")
    with pytest.raises(DataError, match="not valid JSON"):
        load_conversations(str(path), skip_invalid=True)


def test_a_100k_character_message_is_legal(tmp_path):
    long = "长" * 100_000
    path = write(tmp_path / "x.json", [official(("human", long), ("gpt", "ok"))])
    assert load_conversations(str(path))[0].messages[0].content == long


def test_data_error_survives_pickling_across_worker_processes():
    error = DataError("f.json", "unknown role 'x'", "record 3", reason="unknown role")
    clone = pickle.loads(pickle.dumps(error))
    assert str(clone) == "f.json, record 3: unknown role 'x'" and clone.reason == "unknown role"


# ---------------------------------------------------------------- chunked reading

CHUNKED_CASES = [
    json.dumps(
        [GOOD, official(("human", "多字节文本" * 7), ("gpt", "答")), GOOD], ensure_ascii=False, indent=1
    ),
    " \n[ " + json.dumps(GOOD) + " ,\n\n" + json.dumps(GOOD) + "]\n ",
    "[" + json.dumps(GOOD) + ", 12345678]",
    "[" + json.dumps(GOOD) + ",\n  {oops",
    "[" + json.dumps(GOOD) + "\n " + json.dumps(GOOD) + "]",
    "[" + json.dumps(GOOD) + ",]",
    "[" + json.dumps(GOOD) + "] extra",
    "[" + json.dumps(GOOD),
    "[\n\n",
]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_chunked_json_reading_gives_the_records_and_errors_of_a_whole_file_parse(
    tmp_path, monkeypatch, chunk
):
    """A .json list is parsed record by record from chunks (any size, cutting UTF-8 characters, numbers and
    strings): the same records as json.loads, and on broken files json's message at the same line and column."""
    import finetune.data.formats as formats

    monkeypatch.setattr(formats, "CHUNK_BYTES", chunk)
    for i, text in enumerate(CHUNKED_CASES):
        path = write(tmp_path / f"{i}.json", text)
        try:
            expected = [r for r in json.loads(text)]
        except json.JSONDecodeError as e:
            with pytest.raises(DataError) as error:
                list(formats._json_records(str(path)))
            assert str(error.value) == f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
            continue
        assert [r.data for r in formats._json_records(str(path))] == expected


def test_bad_utf8_offset_is_counted_across_chunks(tmp_path, monkeypatch):
    import finetune.data.formats as formats

    monkeypatch.setattr(formats, "CHUNK_BYTES", 4)
    path = write(tmp_path / "x.json", '["ab", "é", "\xff"]'.encode("latin-1").replace(b"\xe9", "é".encode()))
    with pytest.raises(DataError, match=r"x\.json: not UTF-8 text \(bad byte at offset 14\)$"):
        list(formats._json_records(str(path)))
