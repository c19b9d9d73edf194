"""Train = inference: a tiny model fine-tuned on a few conversations answers their first user turn, through
finetune.chat (Python API and the one-shot CLI, greedy), with the trained reply verbatim, stopped at eos.

Two templates: baichuan2 (a tiny Baichuan2 from finetune.tiny) and a tokenizer chat template (a tiny Llama
with a ChatML tokenizer built here). Training uses the project's label builders, so this checks that the
training samples and the chat prompts agree token for token.
"""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import finetune  # noqa: F401  (registers the Baichuan classes with the Auto classes)
from finetune.chat import Chat, main
from finetune.data.constants import IGNORE_INDEX
from finetune.data.formats import Conversation, Message
from finetune.data.templates import TEMPLATES, resolve_template
from finetune.tiny import write_tiny_checkpoint

CONVERSATIONS = [
    [
        ("user", "你好"),
        ("assistant", "你好！我是一个小模型，很高兴见到你。"),
        ("user", "讲个笑话"),
        ("assistant", "好的。"),
    ],
    [("user", "What is the capital of France?"), ("assistant", "The capital of France is Paris.")],
    [
        ("user", "请把这句话翻译成英文：我喜欢读书。"),
        ("assistant", "I like reading books."),
        ("user", "谢谢"),
        ("assistant", "不客气！"),
    ],
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MAX_STEPS = 150
TARGET_LOSS = 0.05  # reached in ~40 steps at lr 1e-2; every supervised token is then the argmax


def conversations() -> list[Conversation]:
    return [
        Conversation(tuple(Message(r, c) for r, c in turns), id=str(i))
        for i, turns in enumerate(CONVERSATIONS)
    ]


def batch(samples, pad_id):
    """Right-padded tensors of (input_ids, labels) samples."""
    width = max(len(ids) for ids, _ in samples)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in samples])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in samples])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in samples])
    return input_ids, labels, mask


def fine_tune(model, tokenizer, template, output_dir):
    """Full fine-tuning on every conversation in one batch until each supervised token is the model's argmax
    with a margin (loss < TARGET_LOSS); saves model and tokenizer."""
    samples = [TEMPLATES[template].tokenize(c, tokenizer) for c in conversations()]
    input_ids, labels, mask = batch(samples, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(MAX_STEPS):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < TARGET_LOSS:
            break
    model.eval()
    with torch.no_grad():
        predicted = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    trained = labels[:, 1:] != IGNORE_INDEX
    assert torch.equal(predicted[trained], labels[:, 1:][trained]), f"not learned (loss {loss.item():.3f})"
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    return output_dir


def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (exact decode of any text) with a ChatML chat template, built offline."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([text for turns in CONVERSATIONS for _, text in turns], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<unk>",
        eos_token="<|im_end|>",
        chat_template=CHATML,
    )


@pytest.fixture(scope="module")
def baichuan_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-to-chat-baichuan")
    base = write_tiny_checkpoint(root / "base", arch="7b")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    assert resolve_template(None, tokenizer, model.config.model_type).name == "baichuan2"
    return fine_tune(model, tokenizer, "baichuan2", root / "full")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-to-chat-llama")
    tokenizer = chatml_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert resolve_template(None, tokenizer, config.model_type).name == "chat_template"
    return fine_tune(model, tokenizer, "chat_template", root / "full")


@pytest.fixture(params=["baichuan", "llama"])
def trained_dir(request):
    return request.getfixturevalue(f"{request.param}_dir")


def test_python_api_returns_the_trained_reply(trained_dir):
    chat = Chat.from_pretrained(trained_dir, dtype="fp32", device="cpu", greedy=True, max_new_tokens=64)
    for turns in CONVERSATIONS:
        (_, question), (_, answer) = turns[:2]
        reply = chat.reply([{"role": "user", "content": question}])
        assert (reply.text, reply.finish_reason) == (answer, "stop")  # ended by its eos


def test_second_turn_with_history(trained_dir):
    chat = Chat.from_pretrained(trained_dir, dtype="fp32", device="cpu", greedy=True, max_new_tokens=64)
    turns = CONVERSATIONS[0]
    history = [{"role": role, "content": text} for role, text in turns[:3]]
    assert chat.reply(history).text == turns[3][1]


def test_cli_one_shot_prints_the_trained_reply(trained_dir, capsys):
    (_, question), (_, answer) = CONVERSATIONS[1][:2]
    argv = [
        "--model",
        str(trained_dir),
        "--prompt",
        question,
        "--greedy",
        "--max_new_tokens",
        "64",
        "--dtype",
        "fp32",
    ]
    assert main([*argv, "--device", "cpu"]) == 0
    assert capsys.readouterr().out == answer + "\n"
