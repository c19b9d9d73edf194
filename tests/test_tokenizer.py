"""BaichuanTokenizer: ids equal to SentencePiece, official special-token handling, decode, save/reload, Auto."""

import json

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

import finetune  # noqa: F401  (registers BaichuanTokenizer with AutoTokenizer)
from finetune.models.baichuan import BaichuanTokenizer

TEXTS = [
    "你好",
    "写一篇关于气候变化对海洋生态的影响的文章。\n",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "hello",
    " hello",  # leading space: no dummy prefix is added or removed
    "two  spaces and   three",
    "  leading and trailing  ",
    "tab\tseparated\tvalues",
    "line one\nline two\n\nline four\n",
    "\n",
    "digits 1234567890 and 3.14159",
    "2023年9月6日发布，共2.6万亿个token。",
    "全角：ＡＢＣ１２３，标点！？",
    "emoji 😀🎉👍🏽 and flags 🇨🇳",
    "rare CJK 𠀀𪚥龘 and Korean 안녕하세요",
    "control \x00\x07 and non-breaking\u00a0space",
    "<reserved_106>你好<reserved_107>",
    "def add(a, b):\n    return a + b",
    "",
]
WITH_LITERAL_SPECIALS = [
    "<s>",
    "a<s>b",
    "你好</s>",
    "<unk> at the start",
    " <s> spaced </s> ",
    "<s><s></s>",
]


@pytest.fixture(scope="module", params=["7b", "13b"])
def tiny_dir(request, tiny7b, tiny13b):
    return {"7b": tiny7b, "13b": tiny13b}[request.param]


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def sp(tiny_dir):
    return spm.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer.model"))


def test_auto_tokenizer_resolves_to_our_class_without_remote_code(tiny_dir):
    for kwargs in ({}, {"use_fast": False}, {"use_fast": False, "model_max_length": 512}):
        tokenizer = AutoTokenizer.from_pretrained(tiny_dir, **kwargs)
        assert type(tokenizer) is BaichuanTokenizer
    assert tokenizer.model_max_length == 512
    assert AutoTokenizer.from_pretrained(tiny_dir).model_max_length == 4096


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_sentencepiece(tokenizer, sp, text):
    assert tokenizer.encode(text) == sp.encode(text)
    assert tokenizer(text)["input_ids"] == sp.encode(text)


def test_chat_markers_and_newline_are_single_pieces(tokenizer):
    assert tokenizer.encode("<reserved_106>") == [195]
    assert tokenizer.encode("<reserved_107>") == [196]
    assert tokenizer.encode("\n") == [5]
    assert tokenizer.convert_ids_to_tokens([3, 4, 5, 195, 196]) == [
        "<SEP>",
        "<CLS>",
        "\n",
        "<reserved_106>",
        "<reserved_107>",
    ]


def test_literal_special_tokens_split_out_as_official(tokenizer, sp):
    # Official behaviour (both 7B and 13B configs): the literal strings become the special ids.
    assert tokenizer.encode("a<s>b") == sp.encode("a") + [1] + sp.encode("b")
    assert tokenizer.encode("你好</s>") == sp.encode("你好") + [2]
    assert tokenizer.encode("<unk> at") == [0] + sp.encode(" at")
    assert tokenizer.encode(" <s> ") == sp.encode(" ") + [1] + sp.encode(" ")
    # Opting out gives plain SentencePiece, which spells them out.
    for text in WITH_LITERAL_SPECIALS:
        assert tokenizer.encode(text, split_special_tokens=True) == sp.encode(text)
    assert 1 not in tokenizer.encode("<s>", split_special_tokens=True)


def test_special_ids_and_sizes(tokenizer, sp):
    assert (tokenizer.unk_token, tokenizer.unk_token_id) == ("<unk>", 0)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<unk>", 0)
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<s>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("</s>", 2)
    assert tokenizer.vocab_size == len(tokenizer) == sp.get_piece_size()
    vocab = tokenizer.get_vocab()
    assert len(vocab) == sp.get_piece_size()
    assert vocab["<reserved_106>"] == 195


def test_official_config_adds_no_bos_or_eos(tokenizer, sp):
    assert (tokenizer.add_bos_token, tokenizer.add_eos_token) == (False, False)
    assert tokenizer("你好")["input_ids"] == sp.encode("你好")


def test_add_bos_and_eos_are_honoured(tiny_dir, sp):
    vocab_file = tiny_dir / "tokenizer.model"
    ids = sp.encode("你好 world")
    defaults = BaichuanTokenizer(vocab_file)  # the official class defaults: bos on, eos off
    assert defaults.encode("你好 world") == [1] + ids
    both = BaichuanTokenizer(vocab_file, add_bos_token=True, add_eos_token=True)
    encoded = both("你好 world", return_special_tokens_mask=True)
    assert encoded["input_ids"] == [1] + ids + [2]
    assert encoded["special_tokens_mask"] == [1] + [0] * len(ids) + [1]
    assert both.encode("你好 world", add_special_tokens=False) == ids
    assert both.encode("a", "b") == [1] + sp.encode("a") + [2, 1] + sp.encode("b") + [2]


@pytest.mark.parametrize("text", TEXTS + WITH_LITERAL_SPECIALS)
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_skips_special_tokens(tokenizer, sp):
    text = "你好！\n Hi  there 😀"
    ids = [1] + sp.encode(text) + [2, 0, 0]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids) == "<s>" + text + "</s><unk><unk>"
    # The chat markers are ordinary pieces, kept by skip_special_tokens (as officially).
    assert (
        tokenizer.decode([195, *sp.encode("hi"), 196], skip_special_tokens=True)
        == "<reserved_106>hi<reserved_107>"
    )


def test_save_pretrained_reloads_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"]) == (False, False)
    assert config["tokenizer_class"] == "BaichuanTokenizer"
    assert config["auto_map"] == {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]}
    special = json.loads((tmp_path / "special_tokens_map.json").read_text())
    # AddedToken dicts with no stripping, as the official files: transformers <= 4.33 (the official code's stack)
    # strips the spaces around plain-string special tokens, which changes ids of text such as "a <s> b".
    assert {name: token["content"] for name, token in special.items()} == {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
    }
    assert all(not token["lstrip"] and not token["rstrip"] for token in special.values())
    for reloaded in (BaichuanTokenizer.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(reloaded) is BaichuanTokenizer
        assert (reloaded.add_bos_token, reloaded.add_eos_token) == (False, False)
        for text in TEXTS + WITH_LITERAL_SPECIALS:
            assert reloaded.encode(text) == tokenizer.encode(text)


def test_save_keeps_non_default_flags(tiny_dir, tmp_path):
    BaichuanTokenizer(tiny_dir / "tokenizer.model", add_bos_token=False, add_eos_token=True).save_pretrained(
        tmp_path
    )
    reloaded = BaichuanTokenizer.from_pretrained(tmp_path)
    assert (reloaded.add_bos_token, reloaded.add_eos_token) == (False, True)


def test_missing_model_file_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nope.model: SentencePiece tokenizer.model not found"):
        BaichuanTokenizer(tmp_path / "nope.model")
