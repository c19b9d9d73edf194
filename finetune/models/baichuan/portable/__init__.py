"""Portable remote code: the files full fine-tunes and exports ship next to their weights.

`configuration_baichuan.py`, `modeling_baichuan.py` and `tokenization_baichuan.py` import only torch,
transformers and sentencepiece, so `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(out,
trust_remote_code=True)` load an output without this repository, on transformers 4.33 (the official stack) and
on transformers 5. They are copied, never imported by `finetune` (the native model is the training code;
tests pin the two equal).
"""

from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent
REMOTE_CODE_FILES = ("configuration_baichuan.py", "modeling_baichuan.py", "tokenization_baichuan.py")
# What the official config.json / tokenizer_config.json name in auto_map; these files provide the same names.
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_baichuan.BaichuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]}
