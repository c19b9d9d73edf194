"""`python -m finetune.preprocess` on a tiny Baichuan2 checkpoint: official parity, report, one-line errors."""

import json

import pytest
from fakes import official_sample
from helpers import DATA

import finetune  # noqa: F401  (registers the Baichuan tokenizer)
from finetune.data.formats import load_conversations
from finetune.data.report import trainable_tokens
from finetune.data.templates import TEMPLATES, Baichuan2Template, Masking, encode_texts
from finetune.loading import load_tokenizer
from finetune.preprocess import main, report_path


@pytest.fixture(scope="module")
def tiny(tiny7b):
    return str(tiny7b)


def run(tmp_path, *args):
    tmp_path.mkdir(parents=True, exist_ok=True)
    output = tmp_path / "out.jsonl"
    code = main([*args, "--output", str(output), "--cache_dir", str(tmp_path / "cache")])
    lines = (
        [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()] if code == 0 else []
    )
    return code, lines, output


@pytest.mark.parametrize("truncation", ["turns", "official"])
def test_output_equals_official_script_on_every_sample_that_fits(tiny, tmp_path, truncation):
    max_length = 256
    code, lines, _ = run(
        tmp_path,
        "--model_name_or_path",
        tiny,
        "--data_path",
        str(DATA / "sample_chat.json"),
        "--model_max_length",
        str(max_length),
        "--truncation",
        truncation,
    )
    assert code == 0
    tokenizer = load_tokenizer(tiny)
    records = json.loads((DATA / "sample_chat.json").read_text(encoding="utf-8"))
    assert [line["id"] for line in lines] == [r["id"] for r in records]
    fitting = 0
    for record, line in zip(records, lines, strict=True):
        input_ids, labels = official_sample(tokenizer, record)
        if len(input_ids) <= max_length:
            fitting += 1
            assert (line["input_ids"], line["labels"]) == (input_ids, labels)
        elif truncation == "official":
            assert (line["input_ids"], line["labels"]) == (input_ids[:max_length], labels[:max_length])
        else:
            assert len(line["input_ids"]) <= max_length and line["input_ids"][-1] == line["labels"][-1] == 2
    assert 0 < fitting < len(records)  # both cases exercised


def test_report_is_written_and_reloads(tiny, tmp_path, capsys):
    code, lines, output = run(
        tmp_path,
        "--model_name_or_path",
        tiny,
        "--data_path",
        str(DATA / "examples"),
        "--model_max_length",
        "128",
    )
    assert code == 0
    report = json.loads(report_path(output).read_text(encoding="utf-8"))
    assert report_path(output).name == "out.report.json"
    assert report["records_read"] == 4 + 4 + 3 + 3
    assert report["samples_kept"] == len(lines)
    assert report["tokens"] == sum(len(line["input_ids"]) for line in lines)
    assert report["template"] == "baichuan2"
    printed = capsys.readouterr().out
    assert f"wrote {len(lines)} samples" in printed and "trainable share" in printed


def test_bad_data_exits_nonzero_with_one_line(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n{nope\n',
        encoding="utf-8",
    )
    code, _, output = run(tmp_path, "--model_name_or_path", tiny, "--data_path", str(bad))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not output.exists()
    assert (
        err[-1]
        == f"{bad}, line 2: broken JSON line (Expecting property name enclosed in double quotes at column 2)"
    )
    assert not any("Traceback" in line for line in err)
    code, lines, _ = run(
        tmp_path, "--model_name_or_path", tiny, "--data_path", str(bad), "--skip_invalid", "True"
    )
    assert code == 0 and len(lines) == 1
    assert json.loads(report_path(tmp_path / "out.jsonl").read_text())["dropped"] == {"broken JSON line": 1}


def test_batched_baichuan_encoding_equals_tokenizer_encode(tiny):
    tokenizer = load_tokenizer(tiny)
    texts = [t for c in load_conversations(str(DATA)) for t in Baichuan2Template.texts(c)]
    texts += ["a literal </s> and <s> and <unk> inside", "<reserved_106>marker text", "", " two  spaces\n"]
    assert encode_texts(tokenizer, texts) == [tokenizer.encode(t) for t in texts]
    assert encode_texts(tokenizer, ["x</s>"])[0][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("flag", ["--mask", "--masking"])  # sft.py's name, and the tool's older one
def test_mask_flag_has_sft_name_and_old_alias(tiny, tmp_path, flag):
    args = [
        "--model_name_or_path",
        tiny,
        "--data_path",
        str(DATA / "sample_chat.json"),
        "--model_max_length",
        "4096",
    ]
    _, every, _ = run(tmp_path / "all", *args)
    code, last, _ = run(tmp_path / "last", *args, flag, "last_assistant")
    assert code == 0 and len(last) == len(every)
    tokenizer = load_tokenizer(tiny)
    for conv, line in zip(load_conversations(str(DATA / "sample_chat.json")), last, strict=True):
        assert line["labels"] == TEMPLATES["baichuan2"].tokenize(conv, tokenizer, Masking.LAST_TURN)[1]
    assert sum(map(trainable_tokens, (x["labels"] for x in last))) < sum(
        map(trainable_tokens, (x["labels"] for x in every))
    )
