"""An OpenAI-compatible chat server and a side-by-side web page for the models this repository trains.

    python -m finetune.serve --model output/tiny-7b --model output/demo [--host 127.0.0.1 --port 8000]

``GET /v1/models``, ``POST /v1/chat/completions`` (streaming or not) and, at ``/``, a page that sends one
message to one or two models and shows their replies side by side. Prompts and generation defaults are
`finetune.chat.Chat`'s, so a request at temperature 0 gets the reply ``python -m finetune.chat --greedy`` gives.
"""
