#!/usr/bin/env bash
# `make demo`: fine-tune a tiny random Baichuan2-7B with LoRA on two CPU ranks (DeepSpeed ZeRO-2), reload
# the adapter, and ask it the first training question: its greedy reply should be the reply it was trained on.
# Ends with the command that serves the base and the adapter side by side (python -m finetune.serve).
# A few minutes on 2 cores; nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] && export PATH="$PWD/.venv/bin:$PATH"  # as `make demo` runs it

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two CPU ranks even on a GPU host: DeepSpeed's CPU accelerator over gloo, one OpenMP thread per rank.
export DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1

BASE=output/tiny-7b
RECIPE=recipes/demo/tiny_lora.yaml
OUT=output/demo

if [[ ! -f $BASE/config.json ]]; then
    python -m finetune.tiny --arch 7b --output "$BASE"
fi
rm -rf "$OUT"
deepspeed --num_gpus 2 finetune/sft.py --config "$RECIPE" --output_dir "$OUT"

python - "$OUT" <<'PY'
import json
import sys

import torch

import finetune  # noqa: F401  (registers Baichuan2)
from finetune.data.constants import EOS_TOKEN_ID
from finetune.loading import load_model_for_inference, load_tokenizer
from finetune.data.templates import build_chat_prompt

out = sys.argv[1]
turns = json.load(open("data/sample_chat.json", encoding="utf-8"))[0]["conversations"]
question, trained = turns[0]["value"], turns[1]["value"]

tokenizer = load_tokenizer(out)
model = load_model_for_inference(out, dtype=torch.float32)
prompt = build_chat_prompt(tokenizer, [{"role": "user", "content": question}], "baichuan2", max_input_tokens=512)
with torch.no_grad():
    generated = model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        repetition_penalty=1.0,
        max_new_tokens=len(tokenizer.encode(trained)) + 8,
        eos_token_id=EOS_TOKEN_ID,
    )
reply = tokenizer.decode(generated[0, len(prompt):], skip_special_tokens=True)

print(f"\nadapter: {out} (AutoPeftModelForCausalLM)\n")
print(f"question : {question}\n")
print(f"generated: {reply}\n")
print(f"trained  : {trained}\n")
print("greedy reply == trained reply:", "yes" if reply == trained else "NO")
sys.exit(0 if reply == trained else 1)
PY

python=python
[[ -x .venv/bin/python ]] && python=.venv/bin/python
echo
echo "Compare the base and the fine-tuned model side by side (page: http://127.0.0.1:8000/, API: /v1):"
echo "  $python -m finetune.serve --model $BASE --model $OUT"
