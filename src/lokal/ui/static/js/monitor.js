// The monitor page: polls /ui/api/monitor every second while visible; tokens/s chart with uPlot.
import { getJSON, formatBytes, formatSeconds } from "./api.js";

const POINTS = 180; // three minutes of history at one snapshot per second

export class MonitorPage {
  constructor(root) {
    this.root = root;
    this.chartEl = root.querySelector("#tps-chart");
    this.times = [];
    this.tps = [];
    this.running = [];
    this.chart = null;
    this.timer = null;
    window.addEventListener("resize", () => this.resize());
    // A theme switch redraws the chart with the new axis colours.
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
      this.chart?.destroy();
      this.chart = null;
      this.draw();
    });
  }

  start() {
    if (this.timer) return;
    this.poll();
    this.timer = setInterval(() => this.poll(), 1000);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async poll() {
    let snap;
    try {
      snap = await getJSON("/ui/api/monitor");
    } catch {
      return;
    }
    this.render(snap);
  }

  render(snap) {
    const $ = (id) => this.root.querySelector(id);
    const m = snap.machine;
    $("#mon-cpu").textContent = `${m.cpu_percent.toFixed(0)}%`;
    $("#mon-cpu-count").textContent = `${m.cpu_count} cores`;
    $("#mon-ram").textContent = formatBytes(m.ram_used);
    $("#mon-ram-total").textContent = `of ${formatBytes(m.ram_total)} · lokal ${formatBytes(m.process_rss)} measured`;
    if (m.gpus.length) {
      $("#mon-gpu-card").hidden = false;
      const util = (g) => (g.util_percent === null ? "–" : `${g.util_percent}%`);
      $("#mon-gpu").textContent = m.gpus.map(util).join(" · ");
      $("#mon-gpu-mem").textContent = m.gpus.map((g) => `GPU ${g.index}: ${formatBytes(g.memory_used)} of ${formatBytes(g.memory_total)}`).join(" · ");
      $("#mon-gpu-card").title = m.gpus.map((g) => `GPU ${g.index} ${g.name}`).join("\n");
    }
    $("#mon-running").textContent = snap.running;
    $("#mon-waiting").textContent = snap.waiting;
    $("#mon-tps").textContent = snap.tokens_per_second.toFixed(1);
    $("#mon-requests").textContent = snap.requests_total;

    const models = $("#mon-models");
    models.replaceChildren();
    for (const lm of snap.models) {
      const memory = lm.vram_bytes ? `${formatBytes(lm.memory_bytes)} · ${formatBytes(lm.vram_bytes)} on GPU` : formatBytes(lm.memory_bytes);
      models.append(row([lm.name, memory, lm.running, lm.waiting,
        `${lm.kv_cells_used} / ${lm.kv_cells_total}`, `${lm.host_prefixes} · ${formatBytes(lm.host_prefix_bytes)}`,
        lm.tokens_per_second.toFixed(1)]));
    }
    if (!snap.models.length) models.append(row(["No model loaded."], 7));

    const recent = $("#mon-requests-body");
    recent.replaceChildren();
    for (const r of [...snap.recent_requests].reverse().slice(0, 20)) {
      recent.append(row([
        new Date(r.started_at * 1000).toLocaleTimeString(), r.path, r.model || "–", r.status,
        formatSeconds(r.ttft_s), r.completion_tokens, r.tokens_per_second ? r.tokens_per_second.toFixed(1) : "–",
      ]));
    }
    if (!snap.recent_requests.length) recent.append(row(["No requests yet."], 7));

    if (!this.times.length) {
      // Seed the chart with what finished requests generated before this page was opened.
      for (const [t, v] of snap.history) { this.times.push(t); this.tps.push(v); this.running.push(null); }
    }
    this.times.push(snap.time);
    this.tps.push(snap.tokens_per_second);
    this.running.push(snap.running + snap.waiting);
    if (this.times.length > POINTS) { this.times.shift(); this.tps.shift(); this.running.shift(); }
    this.draw();
  }

  draw() {
    const data = [this.times, this.tps, this.running];
    if (!this.chart) {
      if (!window.uPlot || !this.chartEl.clientWidth) return;
      this.chart = new window.uPlot({
        width: this.chartEl.clientWidth,
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(5, max * 1.1)] } },
        axes: [axis(), { ...axis(), label: "tok/s" }],
        series: [
          {},
          { label: "tokens/s", stroke: "#2563eb", width: 2, fill: "rgba(37,99,235,0.12)" },
          { label: "running + queued", stroke: "#d97706", width: 1 },
        ],
        legend: { live: false },
      }, data, this.chartEl);
    } else {
      this.chart.setData(data);
    }
  }

  resize() {
    if (this.chart && this.chartEl.clientWidth) this.chart.setSize({ width: this.chartEl.clientWidth, height: 220 });
  }
}

// Axis colours from the page's theme (uPlot draws on a canvas, which CSS cannot restyle).
function axis() {
  const style = getComputedStyle(document.documentElement);
  const text = style.getPropertyValue("--muted").trim() || "#6b7280";
  const grid = style.getPropertyValue("--border").trim() || "#e3e5e8";
  return { stroke: text, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
}

function row(values, span) {
  const tr = document.createElement("tr");
  for (const v of values) {
    const td = document.createElement("td");
    td.textContent = String(v);
    if (span) td.colSpan = span;
    tr.append(td);
  }
  return tr;
}
