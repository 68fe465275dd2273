// lokal's HTTP APIs as the page uses them: JSON helpers, an OpenAI chat stream, an Ollama pull stream.

// API keys: when the server has keys (`lokal keys create`), every call carries the key this browser keeps in
// localStorage; the first 401 asks for it (once at a time; not again after a cancel until the page reloads)
// and the call is retried with it.
const KEY_STORAGE = "lokal.apiKey";
let asking = null;
let declined = false;

function askForKey() {
  if (!asking) {
    asking = Promise.resolve().then(() => {
      const key = (window.prompt("This lokal server needs an API key (made with `lokal keys create NAME`):") || "").trim();
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else declined = true;
      setTimeout(() => { asking = null; }, 0);
      return key;
    });
  }
  return asking;
}

export async function authFetch(url, init = {}) {
  const send = () => {
    const headers = new Headers(init.headers || {});
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.set("authorization", `Bearer ${key}`);
    return fetch(url, { ...init, headers });
  };
  const r = await send();
  if (r.status !== 401 || declined) return r;
  return (await askForKey()) ? send() : r;
}

export async function getJSON(url) {
  const r = await authFetch(url);
  if (!r.ok) throw new Error(await errorText(r));
  return r.json();
}

export async function sendJSON(method, url, body) {
  const r = await authFetch(url, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!r.ok) throw new Error(await errorText(r));
  return r.status === 204 ? null : r.json();
}

export async function errorText(r) {
  const text = await r.text();
  try {
    const body = JSON.parse(text);
    return body.error?.message || body.error || body.detail || text;
  } catch {
    return text || `${r.status} ${r.statusText}`;
  }
}

// Read a fetch body line by line (SSE and NDJSON are both line-based).
async function* lines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    const parts = pending.split("\n");
    pending = parts.pop();
    yield* parts;
  }
  if (pending) yield pending;
}

// Stream /v1/chat/completions. onText(fullTextSoFar) is called per delta.
// Returns {text, finishReason, ttft, tokens, tokensPerSecond, aborted}; times in seconds.
export async function streamChat(body, onText, signal) {
  const started = performance.now();
  let firstAt = null;
  let text = "";
  let tokens = 0;
  let usageTokens = null;
  let finishReason = null;
  const result = () => {
    const end = performance.now();
    const n = usageTokens ?? tokens;
    const genSeconds = firstAt === null ? 0 : (end - firstAt) / 1000;
    return {
      text,
      finishReason,
      ttft: firstAt === null ? null : (firstAt - started) / 1000,
      tokens: n,
      tokensPerSecond: genSeconds > 0 && n > 1 ? (n - 1) / genSeconds : null,
      aborted: Boolean(signal?.aborted),
    };
  };
  let response;
  try {
    response = await authFetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal,
    });
  } catch (e) {
    if (signal?.aborted) return result();
    throw e;
  }
  if (!response.ok) throw new Error(await errorText(response));
  try {
    for await (const line of lines(response)) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
      if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices || []) {
        const piece = choice.delta?.content || "";
        if (piece) {
          if (firstAt === null) firstAt = performance.now();
          tokens += 1;
          text += piece;
          onText(text);
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
    }
  } catch (e) {
    if (!signal?.aborted) throw e;
  }
  return result();
}

// Stream Ollama's /api/pull; onStatus({status, total, completed}) per line.
export async function streamPull(name, onStatus) {
  const response = await authFetch("/api/pull", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: name, stream: true }),
  });
  if (!response.ok) throw new Error(await errorText(response));
  for await (const line of lines(response)) {
    if (!line.trim()) continue;
    const status = JSON.parse(line);
    if (status.error) throw new Error(status.error);
    onStatus(status);
  }
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}
