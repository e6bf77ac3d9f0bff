"use strict";
// A one-page chat client for this server: no build step, no dependencies.
// It streams /v1/chat/completions (fetch + ReadableStream, SSE parsed by hand)
// and keeps the conversation in memory; the API key lives in localStorage.

const KEY_STORAGE = "candle-agents.api-key";
const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  apiKey: $("api-key"),
  newChat: $("new-chat"),
  system: $("system"),
  messages: $("messages"),
  empty: $("empty"),
  status: $("status"),
  form: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
};

const history = []; // {role, content} turns sent with every request
let controller = null; // the AbortController of the request in flight
let conversation = 0; // bumped by "New chat", so a reply stopped by it is dropped

function setStatus(text) {
  ui.status.textContent = text;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.hidden = !busy;
  ui.send.hidden = busy;
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = ui.apiKey.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? JSON.stringify(body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function keyNeeded(needed) {
  ui.apiKey.classList.toggle("needed", needed);
  if (needed) setStatus("This server needs an API key: enter it above.");
}

async function loadModels() {
  let response;
  try {
    response = await fetch("/v1/models", { headers: authHeaders() });
  } catch (err) {
    setStatus(`Cannot reach the server: ${err.message}`);
    return;
  }
  if (response.status === 401) {
    keyNeeded(true);
    return;
  }
  if (!response.ok) {
    setStatus(`Could not list models: ${await errorText(response)}`);
    return;
  }
  keyNeeded(false);
  const { data } = await response.json();
  const previous = ui.model.value;
  ui.model.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
  if (data.some((m) => m.id === previous)) ui.model.value = previous;
  setStatus("");
}

function scrollDown() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function addMessage(role, text) {
  ui.empty.hidden = true;
  const div = document.createElement("div");
  div.className = `message ${role}`;
  div.textContent = text;
  ui.messages.append(div);
  scrollDown();
  return div;
}

function addMeta(bubble, text) {
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = text;
  bubble.append(meta);
}

// Yields the data of each server-sent event. Events end at a blank line;
// "\r\n" and "\n" line ends are both legal SSE.
async function* sseData(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) !== -1) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data; // comment lines (": ping") carry no data
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function numberOr(input, fallback) {
  const value = Number.parseFloat(input.value);
  return Number.isFinite(value) ? value : fallback;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  controller = new AbortController();
  setBusy(true);
  setStatus("");

  const system = ui.system.value.trim();
  const body = {
    model: ui.model.value || undefined,
    messages: system ? [{ role: "system", content: system }, ...history] : [...history],
    stream: true,
    stream_options: { include_usage: true },
    temperature: numberOr(ui.temperature, 0.7),
    max_tokens: Math.max(1, Math.round(numberOr(ui.maxTokens, 512))),
  };
  const started = performance.now();
  const ours = conversation;
  let reply = "";
  let usage = null;
  let finish = null;
  let failure = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      if (response.status === 401) keyNeeded(true);
      throw new Error(await errorText(response));
    }
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices ?? []) {
        if (choice.delta?.content) {
          reply += choice.delta.content;
          bubble.textContent = reply;
          scrollDown();
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  } catch (err) {
    if (err.name === "AbortError") finish = "stopped";
    else failure = err.message;
  } finally {
    bubble.classList.remove("streaming");
    controller = null;
    setBusy(false);
  }

  if (ours !== conversation) return;
  if (reply) {
    history.push({ role: "assistant", content: reply });
  } else {
    bubble.remove();
    if (failure) {
      // Nothing came back: take the turn out of the history and give the text back.
      history.pop();
      ui.prompt.value = text;
    }
  }
  if (failure) {
    addMessage("error", failure);
    return;
  }
  if (reply) {
    const seconds = (performance.now() - started) / 1000;
    const parts = [];
    if (usage) {
      parts.push(`${usage.completion_tokens} tokens`);
      parts.push(`${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
    }
    if (finish && finish !== "stop") parts.push(finish === "length" ? "hit max tokens" : finish);
    if (parts.length) addMeta(bubble, parts.join(" · "));
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || controller) return;
  ui.prompt.value = "";
  send(text);
});

ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.form.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => controller?.abort());

ui.newChat.addEventListener("click", () => {
  controller?.abort();
  conversation += 1;
  history.length = 0;
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  ui.prompt.focus();
});

ui.apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
ui.apiKey.addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, ui.apiKey.value.trim());
  loadModels();
});

loadModels();
ui.prompt.focus();
