"""Token ids and values fixed by the official Baichuan2 recipe (BAICHUAN2_SPEC.md §2.3, §4)."""

IGNORE_INDEX = -100
USER_TOKEN_ID = 195  # <reserved_106>
ASSISTANT_TOKEN_ID = 196  # <reserved_107>
PAD_TOKEN_ID = 0  # <unk>; the official pad
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
