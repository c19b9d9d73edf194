"""The data path: records in several formats → `Conversation` (`formats`, read in chunks) → (input_ids, labels) by a
chat template (`templates`) → tokenized, truncated samples in Arrow files and their report (`dataset`, `report`,
stage figures from `meter`) → packed rows (`packing`), each a cache entry (`cache`) that one process builds and
every rank memory-maps (`pipeline` runs the stages for training); or all of it on the fly (`streaming`) → padded
batches (`collator`). Token ids fixed by the official recipe are in `constants`."""
