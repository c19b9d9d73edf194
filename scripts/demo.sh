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

# The first training conversation: its question, and the reply the adapter was trained to give.
question=$(python -c 'import json; print(json.load(open("data/sample_chat.json", encoding="utf-8"))[0]["conversations"][0]["value"], end="")')
trained=$(python -c 'import json; print(json.load(open("data/sample_chat.json", encoding="utf-8"))[0]["conversations"][1]["value"], end="")')
# Greedy decoding with the adapter reloaded as users reload it (AutoPeftModelForCausalLM, in finetune.chat).
generated=$(python -m finetune.chat --model "$OUT" --prompt "$question" --greedy --max_new_tokens 256 --dtype fp32)

printf '\nadapter: %s (AutoPeftModelForCausalLM)\n\n' "$OUT"
printf 'question : %s\n\n' "$question"
printf 'generated: %s\n\n' "$generated"
printf 'trained  : %s\n\n' "$trained"
if [[ $generated == "$trained" ]]; then
    echo "greedy reply == trained reply: yes"
else
    echo "greedy reply == trained reply: NO"
    exit 1
fi

python=python
[[ -x .venv/bin/python ]] && python=.venv/bin/python
echo
echo "Compare the base and the fine-tuned model side by side (page: http://127.0.0.1:8000/, API: /v1):"
echo "  $python -m finetune.serve --model $BASE --model $OUT"
