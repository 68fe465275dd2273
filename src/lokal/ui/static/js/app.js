// Entry point: builds the pages and switches between them with the URL hash (#chat, #models, …).
import { ChatPage } from "./chat.js";
import { ModelsPage } from "./models.js";
import { ArenaPage } from "./arena.js";
import { MonitorPage } from "./monitor.js";

const VIEWS = ["chat", "models", "arena", "monitor"];
const chat = new ChatPage(document.getElementById("view-chat"));
const models = new ModelsPage(document.getElementById("view-models"), () => chat.refreshModels());
const arena = new ArenaPage(document.getElementById("view-arena"));
const monitor = new MonitorPage(document.getElementById("view-monitor"));

function show() {
  const view = VIEWS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "chat";
  for (const name of VIEWS) document.getElementById(`view-${name}`).hidden = name !== view;
  for (const a of document.querySelectorAll(".tabs a")) a.classList.toggle("active", a.dataset.view === view);
  document.body.dataset.view = view;
  if (view === "monitor") monitor.start(); else monitor.stop();
  if (view === "models") models.refresh();
  if (view === "arena") arena.refresh();
  if (view === "chat") chat.refreshModels();
}

window.addEventListener("hashchange", show);
document.getElementById("toggle-sidebar").addEventListener("click", () => {
  document.body.classList.toggle("sidebar-open");
});
// Esc stops whatever is generating on the page in view.
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (chat.busy()) { e.preventDefault(); chat.stop(); }
  if (arena.busy()) { e.preventDefault(); arena.stop(); }
});

chat.start().catch((e) => console.error(e)).finally(() => {
  show();
  document.body.classList.add("ready");
});
