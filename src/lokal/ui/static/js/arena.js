// The arena: one prompt, two contestants (model + preset) streaming side by side, and a tally.
import { getJSON, sendJSON, streamChat, formatSeconds } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { defaults, loadPresets, presetNames, presetParams, requestFields } from "./params.js";
import { modelOptions, toast } from "./widgets.js";

export class ArenaPage {
  constructor(root) {
    this.root = root;
    this.prompt = root.querySelector("#arena-prompt");
    this.runButton = root.querySelector("#arena-run");
    this.stopButton = root.querySelector("#arena-stop");
    this.voteRow = root.querySelector("#vote-row");
    this.tally = root.querySelector("#tally-body");
    this.sides = ["left", "right"].map((side) => ({
      side,
      model: root.querySelector(`#arena-${side}-model`),
      preset: root.querySelector(`#arena-${side}-preset`),
      panel: root.querySelector(`#arena-${side}`),
    }));
    this.controller = null;
    this.labels = null;
    root.querySelector("#arena-form").addEventListener("submit", (e) => { e.preventDefault(); this.run(); });
    this.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.run(); }
    });
    this.stopButton.addEventListener("click", () => this.stop());
    for (const winner of ["left", "right", "tie"]) {
      root.querySelector(`#vote-${winner}`).addEventListener("click", () => this.vote(winner));
    }
  }

  async refresh() {
    await loadPresets();
    for (const [i, s] of this.sides.entries()) {
      await modelOptions(s.model, s.model.value);
      const current = s.preset.value || (i === 0 ? "precise" : "creative");
      s.preset.replaceChildren();
      for (const name of presetNames()) s.preset.append(new Option(name, name));
      s.preset.value = current;
    }
    await this.refreshTally();
  }

  async refreshTally() {
    const rows = await getJSON("/ui/api/arena/tally");
    this.tally.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      for (const v of [r.label, r.wins, r.losses, r.ties]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.append(td);
      }
      this.tally.append(tr);
    }
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 4;
      td.className = "muted";
      td.textContent = "No votes yet.";
      tr.append(td);
      this.tally.append(tr);
    }
  }

  busy() { return this.controller !== null; }

  stop() { this.controller?.abort(); }

  async run() {
    const text = this.prompt.value.trim();
    if (!text || this.busy()) return;
    this.controller = new AbortController();
    this.runButton.hidden = true;
    this.stopButton.hidden = false;
    this.voteRow.hidden = true;
    this.labels = this.sides.map((s) => `${s.model.value} · ${s.preset.value}`);
    const runs = this.sides.map((s, i) => {
      const label = s.panel.querySelector(".arena-label");
      const answer = s.panel.querySelector(".answer");
      const stats = s.panel.querySelector(".arena-stats");
      label.textContent = this.labels[i];
      answer.replaceChildren();
      stats.textContent = "waiting for the first token…";
      s.panel.classList.add("streaming");
      const params = { ...defaults(), ...presetParams(s.preset.value) };
      let pending = null;
      return streamChat(
        { model: s.model.value, messages: [{ role: "user", content: text }], ...requestFields(params) },
        (sofar) => {
          if (pending === null) {
            requestAnimationFrame(() => { renderMarkdown(answer, pending); pending = null; });
          }
          pending = sofar;
          stats.textContent = "streaming…";
        },
        this.controller.signal,
      ).then((r) => {
        renderMarkdown(answer, r.text);
        stats.replaceChildren(...statItems(r));
        return r;
      }).catch((e) => {
        stats.textContent = `error: ${e.message}`;
        throw e;
      }).finally(() => s.panel.classList.remove("streaming"));
    });
    const results = await Promise.allSettled(runs);
    this.controller = null;
    this.runButton.hidden = false;
    this.stopButton.hidden = true;
    if (results.every((r) => r.status === "fulfilled")) this.voteRow.hidden = false;
    else toast("One of the answers failed.");
  }

  async vote(winner) {
    if (!this.labels) return;
    await sendJSON("POST", "/ui/api/arena/votes", { left: this.labels[0], right: this.labels[1], winner });
    this.voteRow.hidden = true;
    await this.refreshTally();
  }
}

function statItems(r) {
  const items = [
    ["ttft", `TTFT ${formatSeconds(r.ttft)}`],
    ["tps", r.tokensPerSecond ? `${r.tokensPerSecond.toFixed(1)} tok/s` : "– tok/s"],
    ["tokens", `${r.tokens} tokens`],
  ];
  if (r.aborted) items.push(["stopped", "stopped"]);
  return items.map(([cls, text]) => {
    const span = document.createElement("span");
    span.className = `stat ${cls}`;
    span.textContent = text;
    return span;
  });
}
