"""finetune.chat: generation settings, the official prompt, streaming and Ctrl-C, the loop, adapters, the CLI."""

import json
import threading

import pytest
import torch
from adapters import make_adapter
from transformers import GenerationConfig

import finetune  # noqa: F401  (registers the Baichuan classes with the Auto classes)
from finetune.chat import (
    Chat,
    _StopText,
    checkpoint_generation_values,
    conversation_loop,
    generation_settings,
    main,
)
from finetune.data.constants import ASSISTANT_TOKEN_ID, OFFICIAL_CHAT_GENERATION, USER_TOKEN_ID
from finetune.export import export

SYSTEM = "You are a helpful assistant."
TURNS = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！有什么可以帮你的吗？"},
    {"role": "user", "content": "讲个笑话"},
]


@pytest.fixture(scope="module")
def chat(tiny7b):
    return Chat.from_pretrained(tiny7b, dtype="fp32", device="cpu", greedy=True, max_new_tokens=300)


@pytest.fixture(scope="module")
def adapter_dir(tiny7b, tmp_path_factory):
    return make_adapter(tiny7b, tmp_path_factory.mktemp("chat-adapter") / "adapter", scale=0.5)


def encode(chat, text):
    return chat.tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- settings


def test_official_defaults_fill_what_the_checkpoint_leaves_out(chat):
    config = generation_settings({"eos_token_id": 2, "pad_token_id": 0}, chat.tokenizer)
    assert {k: getattr(config, k) for k in OFFICIAL_CHAT_GENERATION} == OFFICIAL_CHAT_GENERATION
    assert (config.eos_token_id, config.pad_token_id) == (2, 0)
    absent = generation_settings({}, chat.tokenizer)
    assert absent.max_new_tokens == 2048 and absent.eos_token_id == chat.tokenizer.eos_token_id == 2


def test_checkpoint_values_and_overrides_win(chat):
    config = generation_settings({"temperature": 0.7, "max_new_tokens": 512, "top_k": 20}, chat.tokenizer)
    assert (config.temperature, config.max_new_tokens, config.top_k, config.top_p) == (0.7, 512, 20, 0.85)
    greedy = generation_settings({"temperature": 0.7}, chat.tokenizer, greedy=True, max_new_tokens=7)
    assert (greedy.do_sample, greedy.repetition_penalty, greedy.max_new_tokens) == (False, 1.0, 7)


def test_generation_values_come_from_the_checkpoint_or_the_adapters_base(tiny7b, adapter_dir, tmp_path):
    own = json.loads((tiny7b / "generation_config.json").read_text())
    own.pop("transformers_version")
    assert checkpoint_generation_values(tiny7b) == own
    assert checkpoint_generation_values(adapter_dir) == own
    assert checkpoint_generation_values(tmp_path) == {}


def test_loaded_chat_uses_the_checkpoint_generation_config(tiny7b):
    sampled = Chat.from_pretrained(tiny7b, dtype="fp32", device="cpu")
    assert sampled.template.name == "baichuan2" and sampled.context_length == 4096
    config = sampled.generation_config
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 0.3, 5, 0.85)
    assert (config.repetition_penalty, config.max_new_tokens, config.eos_token_id) == (1.05, 2048, 2)


# ---------------------------------------------------------------- prompts


def test_prompt_is_the_official_chat_input(chat):
    """System text, [195] user / [196] assistant with no eos between turns, trailing 196 (spec §5)."""
    messages = [{"role": "system", "content": SYSTEM}, *TURNS]
    expected = (
        encode(chat, SYSTEM)
        + [USER_TOKEN_ID, *encode(chat, TURNS[0]["content"])]
        + [ASSISTANT_TOKEN_ID, *encode(chat, TURNS[1]["content"])]
        + [USER_TOKEN_ID, *encode(chat, TURNS[2]["content"])]
        + [ASSISTANT_TOKEN_ID]
    )
    assert chat.prompt_ids(messages) == expected
    assert chat.max_input_tokens() == 4096 - 300


def test_prompt_keeps_the_newest_rounds_and_cuts_from_the_left(chat):
    small = Chat(chat.model, chat.tokenizer, chat.template, chat.generation_config, context_length=310)
    assert small.max_input_tokens() == 10
    newest = [USER_TOKEN_ID, *encode(chat, TURNS[2]["content"]), ASSISTANT_TOKEN_ID]
    assert len(newest) <= 10 < len(chat.prompt_ids(TURNS))
    assert small.prompt_ids(TURNS) == newest
    long_question = [{"role": "user", "content": "请写一篇关于气候变化对海洋生态影响的短文。" * 3}]
    full = chat.prompt_ids(long_question)
    assert small.prompt_ids(long_question) == full[-10:] and full[-1] == ASSISTANT_TOKEN_ID
    # max_new_tokens at or over the context: half of it stays for the prompt
    assert (
        Chat(chat.model, chat.tokenizer, chat.template, chat.generation_config, 300).max_input_tokens() == 150
    )


# ---------------------------------------------------------------- replies


def test_streamed_pieces_make_the_reply(chat):
    pieces = []
    reply = chat.reply(TURNS, on_text=pieces.append)
    assert not reply.interrupted and reply.text and "".join(pieces) == reply.text
    assert chat.reply(TURNS).text == reply.text  # greedy is deterministic


def test_ctrl_c_stops_the_reply_not_the_caller(chat):
    full = chat.reply(TURNS).text

    def interrupt(_piece):
        raise KeyboardInterrupt

    threads = threading.active_count()
    partial = chat.reply(TURNS, on_text=interrupt)
    assert partial.interrupted and len(partial.text) < len(full) and full.startswith(partial.text)
    assert threading.active_count() == threads  # the generation thread has ended


def test_adapter_dir_chats_like_its_merged_export(tiny7b, adapter_dir, chat, tmp_path):
    with_adapter = Chat.from_pretrained(
        adapter_dir, dtype="fp32", device="cpu", greedy=True, max_new_tokens=30
    )
    assert (
        type(with_adapter.model).__name__ == "PeftModelForCausalLM"
        and with_adapter.template.name == "baichuan2"
    )
    merged_dir = export(str(tmp_path / "merged"), adapter=str(adapter_dir), dtype="fp32")
    merged = Chat.from_pretrained(merged_dir, dtype="fp32", device="cpu", greedy=True, max_new_tokens=30)
    ids = torch.tensor([with_adapter.prompt_ids(TURNS)])
    with torch.no_grad():
        adapter_logits = with_adapter.model(input_ids=ids).logits
        torch.testing.assert_close(merged.model(input_ids=ids).logits, adapter_logits, atol=5e-5, rtol=1e-4)
        assert not torch.allclose(chat.model(input_ids=ids).logits, adapter_logits, atol=1e-2)
    assert with_adapter.reply(TURNS).text == merged.reply(TURNS).text


# ---------------------------------------------------------------- the loop and the CLI


def test_conversation_loop_history_clear_exit_and_ctrl_c(chat):
    inputs = iter(["讲个笑话", "clear", KeyboardInterrupt, "  讲个笑话  ", "你好", "exit", "never read"])
    state = {"interrupt_reply": False}
    written = []

    def read(prompt):
        value = next(inputs)
        if value is KeyboardInterrupt:
            raise KeyboardInterrupt  # Ctrl-C at the prompt
        state["interrupt_reply"] = value == "你好"
        return value

    def write(text):
        written.append(text)
        if state["interrupt_reply"] and text != "\nAssistant: ":
            state["interrupt_reply"] = False
            raise KeyboardInterrupt  # Ctrl-C while the reply to 你好 streams

    history = conversation_loop(chat, SYSTEM, read=read, write=write)
    system, question = {"role": "system", "content": SYSTEM}, {"role": "user", "content": "讲个笑话"}
    answer = {"role": "assistant", "content": chat.reply([system, question]).text}
    follow_up = {"role": "user", "content": "你好"}
    assert history[:4] == [system, question, answer, follow_up]  # the first exchange was cleared
    full = chat.reply(history[:4]).text
    assert history[4]["role"] == "assistant" and full.startswith(history[4]["content"])
    assert len(history) == 5 and len(history[4]["content"]) < len(full)
    assert " [stopped]\n" in written and "(conversation cleared)\n" in written
    assert "\n(type exit to quit)\n" in written and next(inputs) == "never read"


def test_loop_ends_at_end_of_input(chat):
    def read(prompt):
        raise EOFError

    assert conversation_loop(chat, None, read=read, write=lambda text: None) == []


def test_cli_one_shot_with_system(tiny7b, chat, capsys):
    argv = [
        "--model",
        str(tiny7b),
        "--prompt",
        "你好",
        "--system",
        SYSTEM,
        "--greedy",
        "--max_new_tokens",
        "300",
    ]
    assert main([*argv, "--dtype", "fp32", "--device", "cpu"]) == 0
    expected = chat.reply([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "你好"}]).text
    assert capsys.readouterr().out == expected + "\n"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing"), "--prompt", "hi"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(tmp_path / "empty"), "--prompt", "hi"]) == 2
    for line in capsys.readouterr().err.strip().split("\n"):
        assert line.startswith("error: ")


# ---------------------------------------------------------------- per-request settings (finetune.serve)


def test_request_settings_temperature_0_is_greedy(tiny7b, chat):
    values = checkpoint_generation_values(tiny7b)
    sampled = Chat(chat.model, chat.tokenizer, "baichuan2", generation_settings(values, chat.tokenizer), 4096)
    greedy = generation_settings(values, chat.tokenizer, greedy=True, max_new_tokens=7)
    assert sampled.settings(temperature=0, max_new_tokens=7).to_dict() == greedy.to_dict()
    assert sampled.settings().to_dict() == sampled.generation_config.to_dict()
    custom = sampled.settings(temperature=0.9, top_p=0.5, top_k=3, stop=["。"])
    assert (custom.do_sample, custom.temperature, custom.top_p, custom.top_k) == (True, 0.9, 0.5, 3)
    assert (custom.repetition_penalty, custom.stop_strings) == (1.05, ["。"])
    # a temperature above 0 samples even from a greedy default; top_p means nothing to argmax
    warm = chat.settings(temperature=0.7, top_p=0.5)
    assert (warm.do_sample, warm.temperature, warm.top_p) == (True, 0.7, 0.5)
    assert chat.settings(top_p=0.5).top_p == 1.0


def test_reply_counts_tokens_and_says_why_it_ended(chat):
    reply = chat.reply(TURNS, settings=chat.settings(max_new_tokens=5))
    assert (reply.finish_reason, reply.completion_tokens) == ("length", 5)
    prompt = chat.prompt_ids(TURNS)
    assert reply.prompt_tokens == len(prompt)
    with torch.no_grad():
        first = int(chat.model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    values = {**chat.generation_config.to_diff_dict(), "eos_token_id": first}
    ends = chat.reply(TURNS, settings=GenerationConfig(**values))  # its first token is now eos
    assert (ends.finish_reason, ends.completion_tokens) == ("stop", 1)


def test_stop_strings_end_the_reply_before_the_first_one(chat):
    full = chat.reply(TURNS).text
    stop = full[10:13]
    pieces = []
    reply = chat.reply(TURNS, on_text=pieces.append, settings=chat.settings(stop=["never there", stop]))
    assert reply.text == full[: full.index(stop)] == "".join(pieces)
    assert reply.finish_reason == "stop" and reply.completion_tokens < chat.reply(TURNS).completion_tokens


def test_streamed_text_holds_back_what_may_start_a_stop_string():
    out = []
    text = _StopText(["</s>"], out.append)
    for piece in ["a <", "b <", "/", "s> never sent"]:
        text.feed(piece)
    text.flush()
    assert out == ["a ", "<b "]  # "<" waited for the next piece; "</s>" and what follows never came out


def test_cancel_event_stops_the_reply(chat):
    full = chat.reply(TURNS).text
    cancel = threading.Event()
    partial = chat.reply(TURNS, on_text=lambda piece: cancel.set(), cancel=cancel)
    assert partial.interrupted and partial.finish_reason == "interrupted"
    assert len(partial.text) < len(full) and full.startswith(partial.text)
