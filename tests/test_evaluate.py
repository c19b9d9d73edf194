"""finetune.evaluate: token-mean loss over supervised tokens (= the model's own loss, pooled), batch invariance,
truncation as in training, JSON output, one-line errors."""

import json
import math

import pytest
import torch
from adapters import make_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer

import finetune  # noqa: F401  (registers the Baichuan classes with the Auto classes)
from finetune.data.formats import load_conversations
from finetune.data.options import DataOptions
from finetune.data.report import trainable_tokens
from finetune.data.templates import TEMPLATES, Masking
from finetune.evaluate import evaluate, main
from finetune.export import export
from finetune.tiny import write_tiny_checkpoint

RECORDS = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "写一段关于气候变化对海洋生态影响的短文。\n"},
            {"from": "gpt", "value": "海水温度升高使珊瑚白化，海洋逐渐酸化。\n"},
        ],
    },
    {
        "id": "b",
        "conversations": [
            {"from": "human", "value": "你好"},
            {"from": "gpt", "value": "你好！有什么可以帮你的吗？"},
            {"from": "human", "value": "讲个笑话"},
            {"from": "gpt", "value": "好的。从前有一只小猫，它每天都去公园散步。"},
        ],
    },
    {
        "id": "c",
        "conversations": [
            {"from": "human", "value": "Please write a short poem about the sea and the moon."},
            {"from": "gpt", "value": "The moon leans down to kiss the sea."},
        ],
    },
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    model_dir = write_tiny_checkpoint(root / "tiny", arch="13b")
    data = root / "held_out.json"
    data.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8")
    return model_dir, data, root


def reference_loss(model_dir, data):
    """Pooled token mean from the model's own per-sample loss: sum(loss_i * n_i) / sum(n_i)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    total, count = 0.0, 0
    for conv in load_conversations([str(data)]):
        input_ids, labels = TEMPLATES["baichuan2"].tokenize(conv, tokenizer)
        n = sum(label != -100 for label in labels[1:])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels])).loss
        total += loss.item() * n
        count += n
    return total / count, count


def test_loss_is_the_pooled_token_mean_for_any_batch_size(setup):
    model_dir, data, _ = setup
    expected, tokens = reference_loss(model_dir, data)
    for batch_size in (1, 3):
        result = evaluate(
            str(model_dir),
            DataOptions(data_path=[str(data)]),
            model_max_length=512,
            batch_size=batch_size,
            device="cpu",
        )
        assert result["tokens"] == tokens and result["samples"] == 3
        assert result["loss"] == pytest.approx(expected, rel=1e-5)
        assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert expected > 5  # an untrained tiny model: near ln(vocab), far from any accidental zero


def test_truncation_follows_training(setup):
    model_dir, data, _ = setup
    full = evaluate(str(model_dir), DataOptions(data_path=[str(data)]), model_max_length=512, device="cpu")
    short = evaluate(str(model_dir), DataOptions(data_path=[str(data)]), model_max_length=24, device="cpu")
    assert full["truncated"] == 0 and short["truncated"] >= 1 and short["tokens"] < full["tokens"]


def test_cli_prints_and_writes_json(setup, capsys):
    model_dir, data, root = setup
    out = root / "metrics" / "eval.json"
    argv = ["--model", str(model_dir), "--data_path", str(data), "--device", "cpu", "--output", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text(encoding="utf-8"))
    assert (
        f"eval loss {written['loss']:.4f}" in printed and f"{written['tokens']} supervised tokens" in printed
    )
    assert written["perplexity"] == pytest.approx(math.exp(written["loss"]))
    assert written["template"] == "baichuan2" and written["model_max_length"] == 512


def test_bad_data_is_one_line(setup, capsys):
    model_dir, _, root = setup
    bad = root / "bad.json"
    bad.write_text(json.dumps([RECORDS[0], {"id": "x", "conversations": "oops"}]), encoding="utf-8")
    assert main(["--model", str(model_dir), "--data_path", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bad.json" in err
    assert main(["--model", str(root / "missing"), "--data_path", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_adapter_dir_evaluates_like_its_merged_export(setup):
    model_dir, data, root = setup
    # Every linear layer adapted: on a random model W_pack alone moves the loss by only ~0.05%.
    make_adapter(
        model_dir, root / "adapter", ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"], scale=0.5
    )
    merged = export(str(root / "merged"), adapter=str(root / "adapter"), dtype="fp32")
    on_adapter = evaluate(str(root / "adapter"), DataOptions(data_path=[str(data)]), device="cpu")
    assert on_adapter["loss"] == pytest.approx(
        evaluate(str(merged), DataOptions(data_path=[str(data)]), device="cpu")["loss"], rel=1e-5
    )
    # ... and it is not the base's: far outside the 1e-5 agreement above.
    assert on_adapter["loss"] != pytest.approx(
        evaluate(str(model_dir), DataOptions(data_path=[str(data)]), device="cpu")["loss"], rel=1e-3
    )


def test_mask_flag_scores_what_training_trained(setup, tmp_path):
    """`--mask last_assistant` (sft.py's flag) scores only each conversation's last reply, as that run trained."""
    model_dir, data, _ = setup
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    conversations = load_conversations(str(data))
    results = {}
    for mask in ("all_assistant", "last_assistant"):
        out = tmp_path / f"{mask}.json"
        argv = ["--model", str(model_dir), "--data_path", str(data), "--device", "cpu", "--mask", mask]
        assert main([*argv, "--output", str(out)]) == 0
        results[mask] = json.loads(out.read_text(encoding="utf-8"))
        masking = Masking(mask)
        expected = sum(
            trainable_tokens(TEMPLATES["baichuan2"].tokenize(c, tokenizer, masking)[1]) for c in conversations
        )
        assert results[mask]["tokens"] == expected and results[mask]["mask"] == mask
    assert results["last_assistant"]["tokens"] < results["all_assistant"]["tokens"]
