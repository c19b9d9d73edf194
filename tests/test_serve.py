"""finetune.serve: the official openai client against a server on a free port (a tiny Baichuan2 and a LoRA
adapter on it): replies equal to finetune.chat --greedy, streaming, usage, stop, seed, the error table, the
API key, queueing, disconnects, the command line, and the page in headless Chromium."""

import http.client
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from adapters import make_adapter

import finetune  # noqa: F401  (registers the Baichuan classes with the Auto classes)
from finetune.chat import Chat
from finetune.chat import main as chat_main
from finetune.data.templates import TEMPLATES
from finetune.serve.__main__ import main as serve_main
from finetune.serve.app import create_app
from finetune.serve.registry import ServedModel, load_models, model_ids
from finetune.tiny import write_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "output" / "test-artifacts"
SYSTEM = "你是一个乐于助人的助手。"
QUESTION = "讲个笑话"
TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！有什么可以帮你的吗？"},
    {"role": "user", "content": QUESTION},
]
NEW_TOKENS = 24
LONG_TEXT = "".join(chr(0x4E00 + (i * 37) % 20000) for i in range(5000))  # > 4096 tokens: rare characters


class Server:
    """uvicorn serving ``app`` on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def client(self, api_key="none"):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base = write_tiny_checkpoint(root / "tiny-7b", arch="7b")
    torch.manual_seed(0)  # peft draws lora_A from torch's generator: the same adapter on every run
    return {"tiny-7b": base, "lora": make_adapter(base, root / "lora", scale=0.5)}


@pytest.fixture(scope="module")
def served(dirs):
    return load_models(list(dirs.values()), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def server(served):
    running = Server(create_app(served))
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def greedy(client, model, messages, **kwargs):
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=NEW_TOKENS, **kwargs
    )


def streamed(client, model, messages, **kwargs):
    """(text, finish_reason, usage) of a streamed reply."""
    text, finish, usage = "", None, None
    stream = client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return text, finish, usage


def post(url, body, headers=None):
    """(status, JSON body) of a raw POST: for what the openai client never sends (bad JSON, bad fields)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---------------------------------------------------------------- model ids


def test_model_ids_are_directory_names_made_unique(tmp_path):
    assert model_ids(["output/tiny-7b", "output/demo"]) == ["tiny-7b", "demo"]
    assert model_ids(["runs/a/final", "runs/b/final", "x"]) == ["a/final", "b/final", "x"]
    with pytest.raises(ValueError, match="given twice"):
        model_ids(["output/demo", "output/../output/demo"])


def test_models_are_listed_by_the_openai_client(client, dirs):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny-7b", "lora"]
    assert client.models.retrieve("lora").root == str(dirs["lora"].resolve())
    assert models[0].max_model_len == 4096


# ---------------------------------------------------------------- replies


@pytest.mark.parametrize("model", ["tiny-7b", "lora"])
def test_temperature_0_is_finetune_chat_greedy(client, dirs, model, capsys):
    """Non-streaming and streaming replies equal the CLI's; usage counts the official prompt's tokens."""
    argv = ["--model", str(dirs[model]), "--prompt", QUESTION, "--system", SYSTEM, "--greedy"]
    assert chat_main([*argv, "--max_new_tokens", str(NEW_TOKENS), "--dtype", "fp32", "--device", "cpu"]) == 0
    expected = capsys.readouterr().out.removesuffix("\n")
    messages = TURNS[:1] + TURNS[-1:]
    reply = greedy(client, model, messages)
    assert reply.choices[0].message.content == expected and reply.model == model
    chat = Chat.from_pretrained(dirs["tiny-7b"], dtype="fp32", device="cpu")
    prompt = TEMPLATES["baichuan2"].chat_prompt(chat.tokenizer, messages, max_input_tokens=4096)
    # The tiny random model does not emit eos within NEW_TOKENS here, so the reply ends by length.
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), NEW_TOKENS)
    assert reply.usage.total_tokens == len(prompt) + NEW_TOKENS
    text, finish, usage = streamed(client, model, messages, temperature=0, max_tokens=NEW_TOKENS)
    assert (text, finish, usage) == (expected, "length", reply.usage)


def test_multi_turn_reply_is_the_chat_reply(client, dirs):
    chat = Chat.from_pretrained(
        dirs["lora"], dtype="fp32", device="cpu", greedy=True, max_new_tokens=NEW_TOKENS
    )
    assert greedy(client, "lora", TURNS).choices[0].message.content == chat.reply(TURNS).text


def test_stop_strings_end_the_reply_before_them(client):
    full = greedy(client, "tiny-7b", TURNS).choices[0].message.content
    stop = full[8:11]
    expected = full[: full.index(stop)]
    reply = greedy(client, "tiny-7b", TURNS, stop=[stop, "never in it"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens < NEW_TOKENS
    text, finish, _ = streamed(client, "tiny-7b", TURNS, temperature=0, max_tokens=NEW_TOKENS, stop=stop)
    assert (text, finish) == (expected, "stop")


def test_a_seed_reproduces_a_sampled_reply(client):
    def sample(seed):
        reply = client.chat.completions.create(
            model="lora", messages=TURNS, temperature=1.0, top_p=1.0, max_tokens=12, seed=seed
        )
        return reply.choices[0].message.content

    first = sample(1)
    assert sample(1) == first
    assert len({first, sample(2), sample(3)}) > 1  # it does sample: three seeds, three draws of 12 tokens


def test_requests_to_one_model_queue_and_each_gets_its_reply(client):
    expected = {m: greedy(client, m, TURNS).choices[0].message.content for m in ("tiny-7b", "lora")}
    results = {}

    def ask(i, model):
        results[i] = (model, greedy(client, model, TURNS).choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(i, m)) for i, m in enumerate(["tiny-7b", "lora"] * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 1, 2, 3]
    assert all(text == expected[model] for model, text in results.values())


def open_stream(port, body):
    """A streaming request whose first piece of text has arrived: its generation is under way."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    while b'"delta": {"content"' not in response.readline():
        continue
    return connection, response


def wait_for_log(caplog, pattern):
    """The first match of ``pattern`` among the server's log messages, waiting up to a minute for it."""
    for _ in range(600):
        found = [m for r in caplog.records if (m := re.search(pattern, r.getMessage()))]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"never logged: {pattern}")


LONG = {"model": "tiny-7b", "messages": TURNS, "temperature": 0, "max_tokens": 3000}  # ~40 s of generation
CANCELLED = r"tiny-7b: \d+ prompt \+ (\d+) completion tokens, cancelled: the client disconnected"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(server, client, caplog, stream):
    caplog.set_level(logging.INFO, logger="finetune.serve")
    if stream:
        connection, response = open_stream(server.port, {**LONG, "stream": True})
        response.close()
    else:  # no sign of progress comes back: give the server ample time to start generating
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(LONG), {"Content-Type": "application/json"}
        )
        time.sleep(1)
    connection.close()
    assert int(wait_for_log(caplog, CANCELLED).group(1)) < 3000
    assert greedy(client, "tiny-7b", TURNS).choices[0].finish_reason == "length"  # the model is free again


def test_a_queued_request_whose_client_leaves_never_runs(server, client, caplog):
    caplog.set_level(logging.INFO, logger="finetune.serve")
    first, first_response = open_stream(server.port, {**LONG, "stream": True})
    queued = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    queued.request("POST", "/v1/chat/completions", json.dumps(LONG), {"Content-Type": "application/json"})
    time.sleep(1)  # time to reach the queue
    queued.close()
    wait_for_log(caplog, "tiny-7b: cancelled while queued: the client disconnected")
    first_response.close()
    first.close()
    wait_for_log(caplog, CANCELLED)
    assert greedy(client, "tiny-7b", TURNS).choices[0].finish_reason == "length"


# ---------------------------------------------------------------- errors


GOOD = {"model": "tiny-7b", "messages": [{"role": "user", "content": "你好"}]}
ERRORS = [
    # (request body, status, param, words in the message)
    ({"messages": GOOD["messages"]}, 400, "model", "Field required"),
    ({**GOOD, "messages": []}, 400, "messages", "at least 1 item"),
    ({**GOOD, "messages": [{"role": "bot", "content": "x"}]}, 400, "messages[0].role", "'system', 'user'"),
    ({**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "string"),
    (
        {
            **GOOD,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        400,
        "messages[0].content",
        "only text parts",
    ),
    (
        {**GOOD, "messages": [*GOOD["messages"], TURNS[0]]},
        400,
        "messages",
        "system message is only allowed first",
    ),
    ({**GOOD, "temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ({**GOOD, "top_p": 0}, 400, "top_p", "greater than 0"),
    ({**GOOD, "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    ({**GOOD, "stop": 3}, 400, "stop", "a string or a list"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ({**GOOD, "stop": [""]}, 400, "stop", "must not be empty"),
    ({**GOOD, "n": 2}, 400, "n", "only n=1"),
    ({**GOOD, "seed": -1}, 400, "seed", "greater than or equal to 0"),
    ({**GOOD, "model": "gpt-4"}, 404, "model", "'gpt-4' not found; this server has tiny-7b, lora"),
    ({**GOOD, "messages": [{"role": "user", "content": LONG_TEXT}]}, 400, "messages", "leaves no room"),
    (
        {**GOOD, "max_tokens": 4093},
        400,
        "messages",
        "4 tokens, and max_tokens 4093: more than the 4096-token",
    ),
    (b'{"model": "tiny-7b", "messages": [', 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "request body: Input should be a valid dictionary"),
]


@pytest.mark.parametrize(("body", "status", "param", "words"), ERRORS)
def test_bad_requests_get_openai_errors(server, body, status, param, words):
    got, answer = post(f"{server.url}/v1/chat/completions", body)
    assert got == status and set(answer) == {"error"}
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and words in error["message"]
    assert param is None or status == 404 or error["message"].startswith(f"{param}: ")  # names the field
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError) as e:
        greedy(client, "gpt-4", TURNS)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        greedy(client, "tiny-7b", [{"role": "user", "content": LONG_TEXT}])
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"


@pytest.mark.parametrize(("path", "status"), [("/v1/completions", 404), ("/v1/chat/completions", 405)])
def test_unknown_routes_and_methods_get_json_errors(server, path, status):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}{path}", timeout=10)
    assert e.value.code == status and json.loads(e.value.read())["error"]["message"]


def test_api_key_is_required_when_set(served):
    fresh = [ServedModel(m.id, m.path, m.chat) for m in served]  # own queues for this server's event loop
    keyed = Server(create_app(fresh, api_key="s3cret"))
    try:
        for key in ("none", "s3cret-not"):
            with pytest.raises(openai.AuthenticationError):
                keyed.client(key).models.list()
        status, answer = post(f"{keyed.url}/v1/chat/completions", GOOD)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        assert [m.id for m in keyed.client("s3cret").models.list().data] == ["tiny-7b", "lora"]
        with urllib.request.urlopen(f"{keyed.url}/", timeout=10) as page:  # the page holds no data
            assert b"side by side" in page.read()
    finally:
        keyed.close()


# ---------------------------------------------------------------- the command line


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert serve_main(["--model", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert serve_main(["--model", str(tmp_path / "empty")]) == 2
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)


def test_cli_serves_on_loopback_with_the_key_from_the_environment(dirs):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "BAICHUAN2_SFT_API_KEY": "from-env", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "finetune.serve", "--model", str(dirs["tiny-7b"]), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="from-env", max_retries=0)
        for _ in range(600):  # start-up: imports and the model load, a few seconds
            assert process.poll() is None, process.stdout.read()
            try:
                assert [m.id for m in client.models.list().data] == ["tiny-7b"]
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key="other", max_retries=0
            ).models.list()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert f"page: http://127.0.0.1:{port}/" in output


# ---------------------------------------------------------------- the page


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.browser
@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium, chromium-driver and fonts-wqy-zenhei: bash tests/browser/install.sh (root)",
)
def test_page_shows_two_models_side_by_side(server, client):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{server.url}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model-b")).options) == 3)
        Select(driver.find_element(By.ID, "model-a")).select_by_value("tiny-7b")
        Select(driver.find_element(By.ID, "model-b")).select_by_value("lora")
        driver.find_element(By.ID, "system").send_keys(SYSTEM)
        driver.find_element(By.ID, "temperature").send_keys("0")
        driver.find_element(By.ID, "max_tokens").send_keys(str(NEW_TOKENS))

        def say(text, turn):
            driver.find_element(By.ID, "message").send_keys(text)
            driver.find_element(By.ID, "send").click()
            done = '.message.assistant[data-state="done"]'
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == 2 * turn)
            return [  # textContent: the text as streamed in, not as laid out
                driver.find_elements(By.CSS_SELECTOR, f"#{column} .message.assistant .text")[
                    -1
                ].get_attribute("textContent")
                for column in ("column-a", "column-b")
            ]

        history = {"tiny-7b": [TURNS[0]], "lora": [TURNS[0]]}
        replies = []
        for turn, text in enumerate(["你好", QUESTION], start=1):
            shown = say(text, turn)
            replies.append(shown)
            for model, reply in zip(history, shown):
                history[model].append({"role": "user", "content": text})
                expected = greedy(client, model, history[model]).choices[0].message.content
                assert reply == expected
                history[model].append({"role": "assistant", "content": expected})
        assert shown[0] != shown[1]  # the adapter changes the reply
        headings = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".model-name")]
        assert headings == ["tiny-7b", "lora"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = ARTIFACTS / "serve_page.png"
        driver.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
        driver.find_element(By.ID, "clear").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".message") == []
        assert say("你好", 1) == replies[0]  # a new conversation: the first turn's replies again
    finally:
        driver.quit()
