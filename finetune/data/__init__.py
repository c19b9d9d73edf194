"""The data path: records in several formats → `Conversation` (`formats`) → (input_ids, labels) by a chat
template (`templates`) → a cached, truncated `datasets.Dataset` and its report (`dataset`, `report`) → packed
rows (`packing`) → padded batches (`collator`). Token ids fixed by the official recipe are in `constants`."""
