"""Label tables per template, the template sweep (trained tokens = assistant text only), and prompt parity."""

import json

import pytest
from fakes import CHATML, CharTokenizer, ids, official_sample
from helpers import DATA

from finetune.data.formats import Conversation, DataError, Message, load_conversations
from finetune.data.templates import TEMPLATES, Baichuan2Template, Masking, resolve_template

X = -100
ALL, LAST = Masking.ALL_TURNS, Masking.LAST_TURN


def conv(*turns, system=None):
    return Conversation(tuple(Message(r, c) for r, c in turns), system=system)


# ---------------------------------------------------------------- baichuan2 tables

SPEC_EXAMPLE = [
    ("user", [16829]),
    ("assistant", [16829, 67, 5817, 1583, 11013, 68]),
    ("user", [92955, 92387, 23456]),
    ("assistant", [2015, 66]),
]

BAICHUAN2_TABLE = [
    (
        "spec worked example (§2.3)",
        SPEC_EXAMPLE,
        ALL,
        [195, 16829, 196, 16829, 67, 5817, 1583, 11013, 68, 195, 92955, 92387, 23456, 196, 2015, 66, 2],
        [2, X, X, 16829, 67, 5817, 1583, 11013, 68, 2, X, X, X, X, 2015, 66, 2],
    ),
    (
        "last turn only: earlier reply and its eos masked",
        SPEC_EXAMPLE,
        LAST,
        [195, 16829, 196, 16829, 67, 5817, 1583, 11013, 68, 195, 92955, 92387, 23456, 196, 2015, 66, 2],
        [X, X, X, X, X, X, X, X, X, X, X, X, X, X, 2015, 66, 2],
    ),
    (
        "system prompt: raw tokens, masked, no eos target after it",
        [("system", [7, 8]), ("user", [11]), ("assistant", [12, 13])],
        ALL,
        [7, 8, 195, 11, 196, 12, 13, 2],
        [X, X, X, X, X, 12, 13, 2],
    ),
    (
        "two user turns in a row: official eos label on the second marker too",
        [("user", [11]), ("user", [12]), ("assistant", [13])],
        ALL,
        [195, 11, 195, 12, 196, 13, 2],
        [2, X, 2, X, X, 13, 2],
    ),
    (
        "two replies in a row: the second marker is masked",
        [("user", [11]), ("assistant", [12]), ("assistant", [13])],
        ALL,
        [195, 11, 196, 12, 196, 13, 2],
        [2, X, X, 12, X, 13, 2],
    ),
    (
        "last turn only, conversation ending with a user turn: eos kept on the marker after the reply",
        [("user", [11]), ("assistant", [12]), ("user", [13])],
        LAST,
        [195, 11, 196, 12, 195, 13, 2],
        [X, X, X, 12, 2, X, X],
    ),
    (
        "empty reply still learns to stop",
        [("user", [11]), ("assistant", [])],
        ALL,
        [195, 11, 196, 2],
        [2, X, X, 2],
    ),
]


@pytest.mark.parametrize(
    "name,turns,masking,input_ids,labels", BAICHUAN2_TABLE, ids=[t[0] for t in BAICHUAN2_TABLE]
)
def test_baichuan2_labels(name, turns, masking, input_ids, labels):
    assert Baichuan2Template.labels(turns, masking) == (input_ids, labels)


def test_baichuan2_equals_official_script_on_every_sample_conversation():
    tokenizer = CharTokenizer()
    records = json.loads((DATA / "sample_chat.json").read_text(encoding="utf-8"))
    convs = load_conversations(str(DATA / "sample_chat.json"))
    for record, c in zip(records, convs, strict=True):
        assert TEMPLATES["baichuan2"].tokenize(c, tokenizer) == official_sample(tokenizer, record)


def test_baichuan2_encodes_without_special_tokens_even_if_the_tokenizer_adds_them():
    class BosAdding(CharTokenizer):
        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            return [1] + token_ids_0

    assert BosAdding().encode("a") == [1, 1097]
    c = conv(("user", "a"), ("assistant", "b"))
    assert TEMPLATES["baichuan2"].tokenize(c, BosAdding())[0] == [195, *ids("a"), 196, *ids("b"), 2]


# ---------------------------------------------------------------- chat_template


def chatml_ids(role, text, close=True):
    return [10, *ids(f"{role}\n{text}"), *([11, *ids("\n")] if close else [])]


def test_chat_template_supervises_reply_and_end_marker_only():
    tokenizer = CharTokenizer(chat_template=CHATML)
    c = conv(("user", "hi"), ("assistant", "yo"), ("user", "ok"), ("assistant", "k"), system="be")
    input_ids, labels = TEMPLATES["chat_template"].tokenize(c, tokenizer)
    expected = (
        chatml_ids("system", "be")
        + chatml_ids("user", "hi")
        + chatml_ids("assistant", "yo")
        + chatml_ids("user", "ok")
        + chatml_ids("assistant", "k")
    )
    assert input_ids == expected
    header = len(chatml_ids("system", "be") + chatml_ids("user", "hi")) + len([10, *ids("assistant\n")])
    yo_span = [*ids("yo"), 11, *ids("\n")]
    assert labels[header : header + len(yo_span)] == yo_span
    assert sum(label != X for label in labels) == len(yo_span) + len([*ids("k"), 11, *ids("\n")])
    _, last_only = TEMPLATES["chat_template"].tokenize(c, tokenizer, LAST)
    assert [t for t in last_only if t != X] == [*ids("k"), 11, *ids("\n")]


def test_chat_template_that_rewrites_earlier_turns_is_refused():
    tokenizer = CharTokenizer(chat_template="{{ messages | length }}" + CHATML)
    with pytest.raises(DataError, match="not prefix-stable at message 0"):
        TEMPLATES["chat_template"].tokenize(conv(("user", "hi"), ("assistant", "yo")), tokenizer)


def test_chat_template_error_names_the_conversation():
    tokenizer = CharTokenizer(chat_template="{{ raise_exception('roles must alternate') }}")
    c = Conversation((Message("user", "a"), Message("assistant", "b")), id="77")
    with pytest.raises(DataError, match="conversation 77: chat template failed: roles must alternate"):
        TEMPLATES["chat_template"].tokenize(c, tokenizer)


@pytest.mark.parametrize("template", ["baichuan2", "chat_template"])
@pytest.mark.parametrize("masking", [ALL, LAST])
def test_sweep_trained_tokens_are_assistant_text_and_never_user_or_system(template, masking):
    tokenizer = CharTokenizer(chat_template=CHATML)
    convs = load_conversations([str(DATA / "sample_system.json"), str(DATA / "examples/alpaca.json")])
    for c in convs:
        _, labels = TEMPLATES[template].tokenize(c, tokenizer, masking)
        trained = tokenizer.decode([t for t in labels[1:] if t != X])
        replies = [m.content for m in c.messages if m.role == "assistant"]
        wanted = replies if masking is ALL else replies[-1:]
        end = "</s>" if template == "baichuan2" else "<|im_end|>\n"
        assert trained == "".join(r + end for r in wanted)


def test_sampler_gives_the_prefix_conversation():
    tokenizer = CharTokenizer(chat_template=CHATML)
    c = conv(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), system="s")
    for template in ("baichuan2", "chat_template"):
        for masking in (ALL, LAST):
            sampler = TEMPLATES[template].sampler(c, tokenizer, masking)
            short = conv(*[(m.role, m.content) for m in c.messages[:2]], system="s")
            assert sampler(2) == TEMPLATES[template].tokenize(short, tokenizer, masking)
            assert sampler(4) == TEMPLATES[template].tokenize(c, tokenizer, masking)


# ---------------------------------------------------------------- template choice


def test_resolve_template():
    plain, chatml = CharTokenizer(), CharTokenizer(chat_template=CHATML)
    assert resolve_template(None, chatml, "baichuan").name == "baichuan2"
    assert resolve_template("auto", chatml, "qwen2").name == "chat_template"
    assert resolve_template("baichuan2", chatml, "qwen2") is TEMPLATES["baichuan2"]
    with pytest.raises(DataError, match="has no chat template"):
        resolve_template(None, plain, "llama")
    with pytest.raises(DataError, match="unknown template 'vicuna'"):
        resolve_template("vicuna", chatml)


# ---------------------------------------------------------------- generation prompts


def msgs(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def test_baichuan2_chat_prompt_matches_spec_build_chat_input():
    tokenizer = CharTokenizer()
    m = msgs(("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"))
    expected = [*ids("S"), 195, *ids("u1"), 196, *ids("a1"), 195, *ids("u2"), 196]
    assert TEMPLATES["baichuan2"].chat_prompt(tokenizer, m, 100) == expected
    # Rounds must fit in max_input_tokens - len(system), not counting the trailing 196 (as the official code):
    # at 10 both rounds (3 + 6 tokens) fit in 9, and the 11-token prompt is then cut from the left to 10.
    assert TEMPLATES["baichuan2"].chat_prompt(tokenizer, m, 10) == expected[1:]
    # At 9 the older round does not fit in 8 and is dropped whole.
    assert TEMPLATES["baichuan2"].chat_prompt(tokenizer, m, 9) == [*ids("S"), 195, *ids("u2"), 196]
    # The newest round is always kept, then the whole prompt is cut from the left.
    assert TEMPLATES["baichuan2"].chat_prompt(tokenizer, msgs(("user", "abcdef")), 4) == [*ids("def"), 196]
    # A last assistant message gets no trailing marker.
    assert TEMPLATES["baichuan2"].chat_prompt(tokenizer, msgs(("user", "a"), ("assistant", "b")), 100) == [
        195,
        *ids("a"),
        196,
        *ids("b"),
    ]


@pytest.mark.parametrize("template", ["baichuan2", "chat_template"])
def test_prompt_for_history_is_a_prefix_of_the_training_tokens(template):
    tokenizer = CharTokenizer(chat_template=CHATML)
    for c in load_conversations([str(DATA / "sample_system.json"), str(DATA / "sample_chat.json")])[:20]:
        input_ids, _ = TEMPLATES[template].tokenize(c, tokenizer)
        messages = c.to_openai()
        for k, m in enumerate(messages):
            if m["role"] == "assistant":
                prompt = TEMPLATES[template].chat_prompt(tokenizer, messages[:k], 100_000)
                assert input_ids[: len(prompt)] == prompt


def test_chat_template_prompt_keeps_newest_rounds_that_fit():
    tokenizer = CharTokenizer(chat_template=CHATML)
    m = msgs(("user", "old question"), ("assistant", "old answer"), ("user", "new"))
    full = TEMPLATES["chat_template"].chat_prompt(tokenizer, m, 10_000)
    newest = TEMPLATES["chat_template"].chat_prompt(tokenizer, m[2:], 10_000)
    assert full[-len(newest) :] == newest and len(full) > len(newest)
    assert TEMPLATES["chat_template"].chat_prompt(tokenizer, m, len(full) - 1) == newest
