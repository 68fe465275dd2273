// Sampling parameters and named presets (built-in ones plus the user's, stored by lokal).
import { getJSON, sendJSON } from "./api.js";

export const FIELDS = [
  { key: "temperature", label: "Temperature", min: 0, max: 2, step: 0.05, value: 0.7 },
  { key: "top_p", label: "Top p", min: 0, max: 1, step: 0.01, value: 0.95 },
  { key: "top_k", label: "Top k", min: 0, max: 200, step: 1, value: 40 },
  { key: "min_p", label: "Min p", min: 0, max: 1, step: 0.01, value: 0.05 },
  { key: "repeat_penalty", label: "Repeat penalty", min: 0.5, max: 2, step: 0.01, value: 1.1 },
  { key: "max_tokens", label: "Max tokens", min: 1, max: 8192, step: 1, value: 512 },
  { key: "seed", label: "Seed (empty: random)", min: 0, max: 4294967295, step: 1, value: null },
  { key: "num_ctx", label: "Context (tokens of history sent)", min: 256, max: 131072, step: 256, value: 4096 },
];

let presets = [];

// The context setting starts at the server's slot size (a longer history would be refused).
export function setServerContext(tokens) {
  const field = FIELDS.find((f) => f.key === "num_ctx");
  if (tokens) field.value = tokens;
}

export async function loadPresets() {
  presets = await getJSON("/ui/api/presets");
  return presets;
}

export function presetNames() {
  return presets.map((p) => p.name);
}

export function presetParams(name) {
  return presets.find((p) => p.name === name)?.params || {};
}

// The request fields for /v1/chat/completions (num_ctx is applied by trimming history, not sent).
export function requestFields(params) {
  const out = {};
  for (const f of FIELDS) {
    const v = params[f.key];
    if (f.key === "num_ctx" || v === null || v === undefined || v === "" || Number.isNaN(v)) continue;
    out[f.key] = v;
  }
  return out;
}

export function defaults() {
  return Object.fromEntries(FIELDS.map((f) => [f.key, f.value]));
}

// The parameters panel of the chat page.
export class ParamsPanel {
  constructor(root) {
    this.fields = root.querySelector("#param-fields");
    this.select = root.querySelector("#preset-select");
    this.name = root.querySelector("#preset-name");
    this.inputs = {};
    for (const f of FIELDS) {
      const label = document.createElement("label");
      label.className = "param";
      const caption = document.createElement("span");
      caption.textContent = f.label;
      const input = document.createElement("input");
      input.type = "number";
      input.id = `param-${f.key}`;
      input.min = f.min; input.max = f.max; input.step = f.step;
      if (f.value !== null) input.value = f.value;
      input.addEventListener("input", () => { this.select.value = ""; this.updateDelete(); });
      label.append(caption, input);
      this.fields.append(label);
      this.inputs[f.key] = input;
    }
    this.deleteButton = root.querySelector("#preset-delete");
    this.select.addEventListener("change", () => { this.apply(this.select.value); this.updateDelete(); });
    root.querySelector("#preset-save").addEventListener("click", () => this.save());
    root.querySelector("#preset-delete").addEventListener("click", () => this.remove());
  }

  async refresh(selected) {
    await loadPresets();
    this.select.replaceChildren(new Option("(custom)", ""));
    for (const p of presets) this.select.append(new Option(p.builtin ? `${p.name} (built-in)` : p.name, p.name));
    if (selected !== undefined) this.select.value = selected;
    this.updateDelete();
  }

  // Only a saved (not built-in) preset can be deleted.
  updateDelete() {
    const preset = presets.find((p) => p.name === this.select.value);
    this.deleteButton.disabled = !preset || preset.builtin;
  }

  apply(name) {
    if (!name) return;
    this.set({ ...defaults(), ...presetParams(name) });
    this.select.value = name;
    this.updateDelete();
  }

  get() {
    const out = {};
    for (const [key, input] of Object.entries(this.inputs)) {
      out[key] = input.value === "" ? null : Number(input.value);
    }
    return out;
  }

  set(params) {
    for (const [key, input] of Object.entries(this.inputs)) {
      const v = params[key];
      input.value = v === null || v === undefined ? "" : v;
    }
  }

  async save() {
    const name = this.name.value.trim();
    if (!name) return;
    const params = Object.fromEntries(Object.entries(this.get()).filter(([, v]) => v !== null));
    await sendJSON("PUT", `/ui/api/presets/${encodeURIComponent(name)}`, { params });
    this.name.value = "";
    await this.refresh(name);
  }

  async remove() {
    const name = this.select.value;
    const preset = presets.find((p) => p.name === name);
    if (!preset || preset.builtin) return;
    await sendJSON("DELETE", `/ui/api/presets/${encodeURIComponent(name)}`);
    await this.refresh("");
  }
}
