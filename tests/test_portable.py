"""Outputs load where users take them: a full fine-tune, a merged export, a `--portable` repair of an official
download and an adapter on it, loaded in a fresh process without `import finetune`, with
`trust_remote_code=True` (the portable remote code) on transformers 5 (.venv) and on transformers 4.33.3 with
peft 0.13 (.venv-official, the official stack) — logits, padded batches and KV-cache greedy generation equal
to the native model's, 7B (RoPE) and 13B (ALiBi), sdpa and eager; token ids and decoding equal to the native
tokenizer's; the chat template equal to the official prompt builder; a training step with gradient
checkpointing gives the native loss and gradients there too.

fp32 throughout. Tolerance 1e-5 on logits of magnitude ~1-10: the portable code performs the native model's
operations in the same order, so the only differences are those between the sdpa and eager kernels
(~1e-6 here); any real difference (a position, a slope, the head) moves logits by far more.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from adapters import make_adapter
from peft import PeftModel
from transformers import AutoModelForCausalLM, GenerationConfig

import finetune  # noqa: F401  (registers the native Baichuan classes)
from finetune.data.templates import TEMPLATES
from finetune.export import export, make_portable
from finetune.loading import load_tokenizer
from finetune.models.baichuan.portable import DIRECTORY as PORTABLE_DIR
from finetune.models.baichuan.portable import REMOTE_CODE_FILES
from finetune.outputs import complete_model_dir
from finetune.tiny import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHECK_SCRIPT = ROOT / "tests" / "remote_code_check.py"
OFFICIAL_PYTHON = ROOT / ".venv-official" / "bin" / "python"
ATOL = 1e-5
# Greedy decoding, set as the model's own generation config: transformers 5 would fill a passed config's unset
# fields from generation_config.json (sampling, repetition penalty), 4.33 would not.
GREEDY = {"do_sample": False, "pad_token_id": 0, "eos_token_id": 2, "max_new_tokens": 6}
INPUT_IDS = [
    [195, 40, 41, 42, 196, 50, 51, 5, 60, 61, 62, 63],
    [195, 70, 71, 196, 80, 81, 82, 83, 84, 85, 86, 87],
]
# Left padding, as batched generation uses; the first row is padded by 4.
PADDED = {
    "input_ids": [[0, 0, 0, 0, 195, 40, 41, 196], [195, 70, 71, 72, 73, 74, 75, 196]],
    "attention_mask": [[0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]],
}
TEXTS = [
    "你好！有什么可以帮你的吗？",
    "Hello  world\n\n  indented",
    "In 2023, 2.6 trillion tokens.",
    "literal <s> and </s> and <unk> inside",
    "<reserved_106>用户<reserved_107>助手",
    "emoji 🤖 and ¥28",
    " leading space",
]
CHATS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "写一首诗"}],
    [
        {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "再说一遍\n"},
    ],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    [
        {"role": "system", "content": "简短回答。"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b <s> c"},
        {"role": "user", "content": "d"},
        {"role": "assistant", "content": "🤖 e"},
    ],
]


def official_prompt(tokenizer, messages) -> list[int]:
    """The official build_chat_input (our baichuan2 prompt builder), context large enough to keep every round."""
    return TEMPLATES["baichuan2"].chat_prompt(tokenizer, messages, max_input_tokens=4096)


def marked_turns(tokenizer, messages) -> tuple[list[int], list[int]]:
    """Ids of a whole conversation as the official format lays it out (system raw, 195/196 markers, no eos), and
    the mask of its assistant texts."""
    ids, mask = [], []
    for message in messages:
        text = tokenizer.encode(message["content"], add_special_tokens=False)
        marker = {"system": [], "user": [195], "assistant": [196]}[message["role"]]
        ids += marker + text
        mask += [0] * len(marker) + [int(message["role"] == "assistant")] * len(text)
    return ids, mask


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights with a large spread, so that every equality below would fail on a real bug."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def full_output(base: Path, out: Path, seed: int) -> Path:
    """What a full fine-tune writes: the trained model and the tokenizer saved, then completed from its base."""
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    randomise(model, seed)
    model.save_pretrained(str(out))
    load_tokenizer(str(base)).save_pretrained(str(out))
    complete_model_dir(out, base)
    return out


def native(path: Path, adapter: Path | None = None):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def native_reference(model) -> dict:
    padded_ids, padded_mask = torch.tensor(PADDED["input_ids"]), torch.tensor(PADDED["attention_mask"])
    getattr(model, "get_base_model", lambda: model)().generation_config = GenerationConfig(**GREEDY)
    with torch.no_grad():
        generated = model.generate(
            input_ids=padded_ids,
            attention_mask=padded_mask,
            output_scores=True,
            return_dict_in_generate=True,
        )
        reference = {
            "logits": model(input_ids=torch.tensor(INPUT_IDS)).logits,
            "padded": model(input_ids=padded_ids, attention_mask=padded_mask).logits,
            "generated": generated.sequences,
            "scores": torch.stack(generated.scores),
        }
    if not isinstance(model, PeftModel):
        model.train()
        loss = model(input_ids=torch.tensor(INPUT_IDS), labels=torch.tensor(INPUT_IDS)).loss
        loss.backward()
        reference |= {"loss": loss.detach(), "grad": model.model.layers[0].self_attn.W_pack.weight.grad}
    return reference


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Model directories as users receive them, with the native model's results on each."""
    root = tmp_path_factory.mktemp("portable")
    base7 = write_tiny_checkpoint(root / "base-7b", arch="7b", seed=0)
    base13 = write_tiny_checkpoint(root / "base-13b", arch="13b", seed=0, fmt="sharded")
    full7 = full_output(base7, root / "full-7b", seed=1)
    full13 = full_output(base13, root / "full-13b", seed=2)
    adapter13 = make_adapter(full13, root / "adapter-13b", ["W_pack", "o_proj"])
    merged13 = export(str(root / "merged-13b"), adapter=str(adapter13), dtype="fp32")
    # An official download (its remote code replaced by a stand-in that must never run), repaired with
    # --portable; an adapter trained on the download is loaded by the official stack onto the repaired copy.
    official7 = full_output(base7, root / "official-7b", seed=3)
    for name in REMOTE_CODE_FILES:
        (official7 / name).write_text("raise ImportError('the official remote code stand-in ran')\n")
    portable7 = make_portable(str(official7), str(root / "portable-7b"))
    adapter7 = make_adapter(official7, root / "adapter-7b", ["W_pack"])
    models = {
        "full-7b": (full7, None),
        "full-13b": (full13, None),
        "merged-13b": (merged13, None),
        "adapter-7b": (portable7, adapter7),
    }
    reference = {name: native_reference(native(*spec)) for name, spec in models.items()}
    plan = {
        "models": [
            {"name": name, "path": str(path), "adapter": str(adapter) if adapter else None}
            for name, (path, adapter) in models.items()
        ],
        "tokenizers": [
            {"name": "tokenizer-7b", "path": str(full7)},
            {"name": "tokenizer-13b", "path": str(merged13)},
        ],
        "input_ids": INPUT_IDS,
        "padded": PADDED,
        "greedy": GREEDY,
        "texts": TEXTS,
        "chats": CHATS,
    }
    (root / "plan.json").write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
    tokenizers = {"tokenizer-7b": load_tokenizer(str(full7)), "tokenizer-13b": load_tokenizer(str(merged13))}
    return root, reference, tokenizers


def run_check(python: Path, root: Path, name: str) -> dict:
    """The check script in a fresh process: no PYTHONPATH, run from an empty directory."""
    result_path = root / f"result-{name}.pt"
    workdir = root / f"cwd-{name}"
    workdir.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": str(workdir),
    }
    run = subprocess.run(
        [str(python), str(CHECK_SCRIPT), str(root / "plan.json"), str(result_path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return torch.load(result_path, weights_only=False)


def assert_models_equal(results: dict, reference: dict) -> None:
    real = torch.tensor(PADDED["attention_mask"]).bool()
    for name, expected in reference.items():
        got = results[name]
        assert "transformers_modules" in got["class"], got["class"]  # the shipped files ran, not ours
        assert expected["logits"].abs().max() > 1.0  # logits large enough for the tolerance to mean something
        for attn in ("sdpa", "eager"):
            torch.testing.assert_close(got[f"logits_{attn}"], expected["logits"], atol=ATOL, rtol=0)
            # padding positions hold no prediction; every real position must match
            torch.testing.assert_close(
                got[f"padded_{attn}"][real], expected["padded"][real], atol=ATOL, rtol=0
            )
            assert got[f"generated_{attn}"].tolist() == expected["generated"].tolist(), (name, attn)
            torch.testing.assert_close(got[f"scores_{attn}"], expected["scores"], atol=ATOL, rtol=0)
        if "loss" in expected:  # training on that stack: same loss and gradients, checkpointing on
            torch.testing.assert_close(got["loss"], expected["loss"], atol=ATOL, rtol=0)
            torch.testing.assert_close(got["grad"], expected["grad"], atol=ATOL, rtol=1e-4)


def assert_tokenizers_equal(results: dict, tokenizers: dict) -> None:
    for name, tokenizer in tokenizers.items():
        got = results[name]
        assert "transformers_modules" in got["class"], got["class"]
        expected = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS]
        assert got["ids"] == expected
        assert got["decoded"] == TEXTS  # decode(encode(x)) == x
        assert got["decoded_skip"] == [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
        if "chat_ids" in got:  # transformers 5 (4.33 has no chat templates)
            assert got["chat_ids"] == [official_prompt(tokenizer, chat) for chat in CHATS]
            expected_turns = [marked_turns(tokenizer, chat) for chat in CHATS]
            assert got["chat_train_ids"] == [ids for ids, _ in expected_turns]
            assert got["assistant_masks"] == [mask for _, mask in expected_turns]


def test_chat_template_is_the_official_prompt(outputs):
    """In-process, through the native tokenizer (what `import finetune` users and our tools get)."""
    root, _, tokenizers = outputs
    for tokenizer in tokenizers.values():
        for chat in CHATS:
            prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False)
            assert list(prompt) == official_prompt(tokenizer, chat)
            whole = tokenizer.apply_chat_template(chat, return_dict=False)
            assert list(whole) == marked_turns(tokenizer, chat)[0]
        assert "<reserved_106>" not in tokenizer.decode([195, 40, 196, 41], skip_special_tokens=True)


def test_transformers5_fresh_process(outputs):
    root, reference, tokenizers = outputs
    results = run_check(Path(sys.executable), root, "transformers5")
    assert results["transformers"].startswith("5.") and results["finetune_modules"] == []
    assert_models_equal(results, reference)
    assert_tokenizers_equal(results, tokenizers)


@pytest.mark.skipif(
    not OFFICIAL_PYTHON.is_file(),
    reason=".venv-official (transformers 4.33.3) is missing: `make official` builds it (`make test` does)",
)
def test_official_stack_fresh_process(outputs):
    root, reference, tokenizers = outputs
    results = run_check(OFFICIAL_PYTHON, root, "official")
    assert results["transformers"] == "4.33.3" and results["finetune_modules"] == []
    assert_models_equal(results, reference)
    assert_tokenizers_equal(results, tokenizers)


def test_remote_code_imports_nothing_of_this_repository():
    """The shipped files import only the standard library, torch, transformers, sentencepiece and each other."""
    allowed = {"torch", "transformers", "sentencepiece"} | set(sys.stdlib_module_names)
    for name in REMOTE_CODE_FILES:
        tree = ast.parse((PORTABLE_DIR / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            assert {m.split(".")[0] for m in modules} <= allowed, (name, modules)
