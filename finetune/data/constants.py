"""Token ids and values fixed by the official Baichuan2 recipe (docs/BAICHUAN2.md)."""

IGNORE_INDEX = -100
USER_TOKEN_ID = 195  # <reserved_106>
ASSISTANT_TOKEN_ID = 196  # <reserved_107>
PAD_TOKEN_ID = 0  # <unk>; the official pad
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2

# Sampling settings of the official Chat checkpoints' generation_config.json (docs/BAICHUAN2.md, "Chat prompt").
OFFICIAL_CHAT_GENERATION = {
    "do_sample": True,
    "temperature": 0.3,
    "top_k": 5,
    "top_p": 0.85,
    "repetition_penalty": 1.05,
    "max_new_tokens": 2048,
}
