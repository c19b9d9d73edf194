// The side-by-side page: one message goes to one or two models, each keeps its own history (its own earlier
// replies), and the replies stream in over the server's own /v1/chat/completions. Plain script, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = { temperature: parseFloat, top_p: parseFloat, top_k: parseInt, repetition_penalty: parseFloat,
  max_tokens: parseInt, seed: parseInt };
const columns = [
  { select: $("model-a"), root: $("column-a"), history: [] },
  { select: $("model-b"), root: $("column-b"), history: [] },
];
let running = [];  // AbortControllers of the replies streaming now

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function status(text) { $("status").textContent = text || ""; }

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModels() {
  const response = await fetch("v1/models", { headers: headers() });
  if (!response.ok) {
    status(response.status === 401 ? "This server needs an API key: type it above." : await errorText(response));
    return;
  }
  status("");
  const ids = (await response.json()).data.map((m) => m.id);
  columns.forEach((column, i) => {
    column.select.replaceChildren();
    if (i > 0) column.select.append(new Option("(none)", ""));
    ids.forEach((id) => column.select.append(new Option(id, id)));
    column.select.value = ids[i] !== undefined ? ids[i] : "";
  });
  newConversation();
}

function activeColumns() { return columns.filter((c) => c.select.value); }

function newConversation() {
  stopAll();
  for (const column of columns) {
    column.history = [];
    column.root.querySelector(".transcript").replaceChildren();
    column.root.querySelector(".model-name").textContent = column.select.value;
    column.root.hidden = !column.select.value;
  }
}

function addMessage(column, role, text) {
  const div = document.createElement("div");
  div.className = `message ${role}`;
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.append(span);
  const transcript = column.root.querySelector(".transcript");
  transcript.append(div);
  transcript.scrollTop = transcript.scrollHeight;
  return div;
}

function requestBody(model, history) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  const body = { model, messages: messages.concat(history), stream: true,
    stream_options: { include_usage: true } };
  for (const [name, parse] of Object.entries(SETTINGS)) {
    const raw = $(name).value.trim();
    if (raw !== "") body[name] = parse(raw);
  }
  return body;
}

// Reads the server-sent events of one streamed reply into its message element.
async function streamReply(body, element, controller) {
  const text = element.querySelector(".text");
  const meta = document.createElement("span");
  meta.className = "meta";
  let finish = null;
  let usage = null;
  const finishWith = (state, note) => {
    element.dataset.state = state;
    meta.textContent = note;
    element.append(meta);
  };
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      text.textContent = await errorText(response);
      finishWith("error", `HTTP ${response.status}`);
      return null;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices) {
          if (choice.delta.content) text.textContent += choice.delta.content;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    const counts = usage ? `${usage.prompt_tokens} + ${usage.completion_tokens} tokens · ` : "";
    finishWith("done", `${counts}${finish || "incomplete"}`);
  } catch (e) {
    if (e.name === "AbortError") {
      finishWith("stopped", "stopped");
    } else {
      text.textContent += (text.textContent ? "\n" : "") + e.message;
      finishWith("error", "error");
      return null;
    }
  }
  return text.textContent;
}

async function send(event) {
  event.preventDefault();
  const message = $("message").value.trim();
  const targets = activeColumns();
  if (!message || !targets.length || running.length) return;
  $("message").value = "";
  $("send").disabled = true;
  $("stop").disabled = false;
  running = targets.map(() => new AbortController());
  await Promise.all(targets.map(async (column, i) => {
    // This conversation's history: New conversation meanwhile starts another, which this reply stays out of.
    const history = column.history;
    history.push({ role: "user", content: message });
    addMessage(column, "user", message);
    const element = addMessage(column, "assistant", "");
    element.dataset.state = "streaming";
    const reply = await streamReply(requestBody(column.select.value, history), element, running[i]);
    if (reply === null) history.pop();  // an error: the question is not part of the conversation
    else history.push({ role: "assistant", content: reply });
  }));
  running = [];
  $("send").disabled = false;
  $("stop").disabled = true;
}

function stopAll() { running.forEach((controller) => controller.abort()); }

$("composer").addEventListener("submit", send);
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
});
$("stop").addEventListener("click", stopAll);
$("clear").addEventListener("click", newConversation);
columns.forEach((column) => column.select.addEventListener("change", newConversation));
$("api-key").addEventListener("change", () => {
  localStorage.setItem("baichuan2-sft-api-key", $("api-key").value);
  loadModels();
});
$("api-key").value = localStorage.getItem("baichuan2-sft-api-key") || "";
loadModels();
