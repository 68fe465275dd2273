// The models page: stored models with a fit badge, pull with live progress, delete, details.
import { authFetch, sendJSON, streamPull, formatBytes } from "./api.js";
import { listModels, toast } from "./widgets.js";

const FIT_TEXT = { fits: "fits", tight: "tight", wont_fit: "won't fit" };

export class ModelsPage {
  constructor(root, onChange) {
    this.body = root.querySelector("#models-body");
    this.details = root.querySelector("#model-details");
    this.note = root.querySelector("#models-note");
    this.status = root.querySelector("#pull-status");
    this.statusText = root.querySelector("#pull-text");
    this.progress = root.querySelector("#pull-progress");
    this.name = root.querySelector("#pull-name");
    this.button = root.querySelector("#pull-button");
    this.onChange = onChange;
    root.querySelector("#pull-form").addEventListener("submit", (e) => { e.preventDefault(); this.pull(); });
  }

  async refresh() {
    const { models, ctx_size: ctx } = await listModels(true);
    this.note.textContent = `Badge: weights plus the KV cache of one ${ctx}-token context against the memory available now.`;
    this.body.replaceChildren();
    for (const m of models) {
      const tr = document.createElement("tr");
      tr.dataset.name = m.name;
      const badge = document.createElement("span");
      badge.className = `badge fit-${m.fit}`;
      badge.textContent = FIT_TEXT[m.fit] || m.fit;
      badge.title = `needs about ${formatBytes(m.needed_bytes)}, ${formatBytes(m.available_bytes)} available`;
      const nameCell = cell(m.name);
      if (m.kind !== "chat") {  // embedding, reranker, …: not offered in the chat and arena pickers
        const kind = document.createElement("span");
        kind.className = "badge kind";
        kind.textContent = m.kind;
        nameCell.append(" ", kind);
      }
      if (m.loaded) {
        const loaded = document.createElement("span");
        loaded.className = "badge loaded";
        loaded.textContent = "loaded";
        nameCell.append(" ", loaded);
      }
      const actions = document.createElement("td");
      actions.className = "actions";
      actions.append(button("Details", () => this.show(m.name)), button("Delete", (b) => this.remove(m.name, b)));
      const fitCell = document.createElement("td");
      fitCell.append(badge);
      const contextCell = cell(m.context_length ? m.context_length.toLocaleString() : "–");
      contextCell.dataset.label = "context";
      tr.append(nameCell, cell(formatBytes(m.size)), cell(m.quantization || "–"), contextCell, fitCell, actions);
      this.body.append(tr);
    }
    if (!models.length) {
      const tr = document.createElement("tr");
      const td = cell("No models yet: pull one above (try smollm2:135m).");
      td.colSpan = 6;
      tr.append(td);
      this.body.append(tr);
    }
  }

  async pull() {
    const name = this.name.value.trim();
    if (!name) return;
    this.button.disabled = true;
    this.status.hidden = false;
    this.status.classList.remove("failed", "done");
    this.progress.removeAttribute("value");
    this.statusText.textContent = `${name}: starting…`;
    const started = performance.now();
    try {
      await streamPull(name, (s) => {
        let line = `${name}: ${s.status}`;
        if (s.total) {
          this.progress.max = s.total;
          this.progress.value = s.completed || 0;
          const seconds = (performance.now() - started) / 1000;
          const rate = (s.completed || 0) / Math.max(seconds, 0.001);
          line += ` — ${formatBytes(s.completed || 0)} of ${formatBytes(s.total)}`;
          line += ` (${Math.floor((100 * (s.completed || 0)) / s.total)}%, ${formatBytes(rate)}/s)`;
        }
        if (s.status === "success") { this.progress.max = 1; this.progress.value = 1; this.status.classList.add("done"); }
        this.statusText.textContent = line;
      });
      this.name.value = "";
      await this.refresh();
      this.onChange();
    } catch (e) {
      this.status.classList.add("failed");
      this.statusText.textContent = `${name}: ${e.message}`;
    } finally {
      this.button.disabled = false;
    }
  }

  async remove(name, b) {
    if (!b.classList.contains("confirm")) {
      b.classList.add("confirm");
      b.textContent = "Really delete?";
      setTimeout(() => { b.classList.remove("confirm"); b.textContent = "Delete"; }, 3000);
      return;
    }
    try {
      await sendJSON("DELETE", "/api/delete", { model: name });
    } catch (e) { toast(e.message); }
    this.details.hidden = true;
    await this.refresh();
    this.onChange();
  }

  async show(name) {
    const r = await authFetch("/api/show", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: name }),
    });
    if (!r.ok) { toast(`show ${name}: ${r.status}`); return; }
    const info = await r.json();
    const d = this.details;
    d.replaceChildren();
    const title = document.createElement("h3");
    title.textContent = name;
    const close = button("Close", () => { d.hidden = true; });
    close.classList.add("close");
    d.append(title, close);
    const facts = document.createElement("dl");
    const rows = {
      kind: info.details?.kind, family: info.details?.family, parameters: info.details?.parameter_size,
      quantization: info.details?.quantization_level, format: info.details?.format,
      capabilities: (info.capabilities || []).join(", "), license: (info.license || "").split("\n")[0],
    };
    for (const [k, v] of Object.entries(info.model_info || {})) {
      if (typeof v !== "object" && !k.startsWith("tokenizer.")) rows[k] = v;
    }
    for (const [k, v] of Object.entries(rows)) {
      if (v === undefined || v === null || v === "") continue;
      const pair = document.createElement("div");
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      pair.append(dt, dd);
      facts.append(pair);
    }
    d.append(facts);
    for (const [label, text] of [["System", info.system], ["Parameters", info.parameters], ["Template", info.template]]) {
      if (!text) continue;
      const h = document.createElement("h4"); h.textContent = label;
      const pre = document.createElement("pre"); pre.textContent = text;
      d.append(h, pre);
    }
    d.hidden = false;
    d.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function button(label, action) {
  const b = document.createElement("button");
  b.className = "small";
  b.textContent = label;
  b.addEventListener("click", () => action(b));
  return b;
}
