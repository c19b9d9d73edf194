"""Load model directories the way other tools do — `trust_remote_code=True`, no `import finetune` — and record
what they compute, for tests/test_portable.py to compare with the native model. Runs under any Python with
torch and transformers (.venv on transformers 5, .venv-official on transformers 4.33):

    python tests/remote_code_check.py PLAN.json RESULT.pt

PLAN: {"models": [{"name", "path", "adapter"?}], "tokenizers": [{"name", "path"}], "input_ids",
"padded": {"input_ids", "attention_mask"}, "greedy" (GenerationConfig fields), "texts", "chats"}. RESULT (torch.save): per model,
logits per attention backend, padded-batch logits, greedy generation (ids and per-step scores, KV cache on),
and (not for adapters) the loss and a gradient of a training step with gradient checkpointing;
per tokenizer, ids and decoded text of each text and, where transformers has chat templates, each chat's
generation prompt ids and its ids with assistant masks; and the names of any `finetune` modules imported (there must be none).
"""

import json
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

NEW_API = int(transformers.__version__.split(".")[0]) >= 5


def load_model(spec, attn):
    kwargs = {"trust_remote_code": True}
    if NEW_API:
        kwargs.update(dtype=torch.float32, attn_implementation=attn)
    else:  # 4.33 has neither argument; the portable model reads config._attn_implementation
        kwargs.update(torch_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(spec["path"], **kwargs)
    if not NEW_API:
        model.config._attn_implementation = attn
    if spec.get("adapter"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec["adapter"])
    return model.eval()


def model_results(spec, plan):
    out = {}
    ids = torch.tensor(plan["input_ids"])
    padded_ids = torch.tensor(plan["padded"]["input_ids"])
    padded_mask = torch.tensor(plan["padded"]["attention_mask"])
    for attn in ("sdpa", "eager"):
        model = load_model(spec, attn)
        transformers_model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        transformers_model.generation_config = GenerationConfig(**plan["greedy"])
        with torch.no_grad():
            out[f"logits_{attn}"] = model(input_ids=ids).logits
            out[f"padded_{attn}"] = model(input_ids=padded_ids, attention_mask=padded_mask).logits
            generated = model.generate(
                input_ids=padded_ids,
                attention_mask=padded_mask,
                use_cache=True,
                output_scores=True,
                return_dict_in_generate=True,
            )
        out[f"generated_{attn}"] = generated.sequences
        out[f"scores_{attn}"] = torch.stack(generated.scores)
        out["class"] = type(transformers_model).__module__
    if not spec.get("adapter"):
        out["loss"], out["grad"] = training_step(load_model(spec, "sdpa"), ids)
    return out


def training_step(model, ids):
    """Loss and the first layer's W_pack gradient of a training forward with gradient checkpointing, as a
    fine-tune from this directory on that transformers would run it."""
    model.train()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), model.model.layers[0].self_attn.W_pack.weight.grad


def tokenizer_results(spec, plan):
    tokenizer = AutoTokenizer.from_pretrained(spec["path"], trust_remote_code=True)
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in plan["texts"]]
    out = {
        "class": type(tokenizer).__module__,
        "ids": ids,
        "decoded": [tokenizer.decode(i) for i in ids],
        "decoded_skip": [tokenizer.decode(i, skip_special_tokens=True) for i in ids],
    }
    if getattr(tokenizer, "chat_template", None):  # transformers >= 4.34
        out["chat_ids"] = [
            list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))
            for chat in plan["chats"]
        ]
        masked = [
            tokenizer.apply_chat_template(chat, return_assistant_tokens_mask=True) for chat in plan["chats"]
        ]
        out["chat_train_ids"] = [list(encoding["input_ids"]) for encoding in masked]
        out["assistant_masks"] = [list(encoding["assistant_masks"]) for encoding in masked]
    return out


def main(plan_path, result_path):
    plan = json.loads(open(plan_path, encoding="utf-8").read())
    results = {"transformers": transformers.__version__}
    for spec in plan.get("models", []):
        results[spec["name"]] = model_results(spec, plan)
    for spec in plan.get("tokenizers", []):
        results[spec["name"]] = tokenizer_results(spec, plan)
    results["finetune_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "finetune")
    torch.save(results, result_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
