// Small pieces shared by the pages: a toast, the list of models for a <select>.
import { getJSON } from "./api.js";

let toastTimer = null;

export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
}

let modelsCache = null;

export async function listModels(refresh = false) {
  if (refresh || !modelsCache) modelsCache = await getJSON("/ui/api/models");
  return modelsCache;
}

// Fill a <select> with the stored chat models, keeping `selected` (or the current value, or the default).
export async function modelOptions(select, selected, refresh = false) {
  const { models: all, default_model: fallback } = await listModels(refresh);
  const models = all.filter((m) => m.kind === "chat");
  const want = selected || select.value || fallback;
  select.replaceChildren();
  for (const m of models) select.append(new Option(m.name, m.name));
  if (!models.length) select.append(new Option("(no models)", ""));
  if (models.some((m) => m.name === want)) select.value = want;
}
