// The chat page: conversations (stored by lokal), streaming answers, stop, regenerate, edit and resend;
// images attached to a message, audio transcribed into the prompt, answers read aloud.
import { getJSON, sendJSON, streamChat, formatSeconds } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { ComposerMedia, thumbnail } from "./composer.js";
import { speakInto } from "./media.js";
import { ParamsPanel, requestFields, setServerContext } from "./params.js";
import { listModels, modelOptions, toast } from "./widgets.js";

const CHARS_PER_TOKEN = 3.5; // a rough estimate, only to trim old history to the context setting
const IMAGE_TOKENS = 576; // an image's share of the context, guessed (LLaVA's 576 patches; models differ)

export class ChatPage {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector("#conversation-list");
    this.messagesEl = root.querySelector("#messages");
    this.prompt = root.querySelector("#prompt");
    this.sendButton = root.querySelector("#send");
    this.stopButton = root.querySelector("#stop");
    this.model = root.querySelector("#chat-model");
    this.title = root.querySelector("#chat-title");
    this.system = root.querySelector("#system-prompt");
    this.search = root.querySelector("#search");
    this.params = new ParamsPanel(root);
    this.conversation = null; // {id, title, messages, ...}
    this.controller = null;
    this.composer = new ComposerMedia(root, this.prompt);
    this.spoken = []; // blob URLs of answers read aloud, per message; revoked when the messages are drawn again
    this.maxBodyBytes = 0; // the server's request size limit, to keep images in history under it

    root.querySelector("#composer").addEventListener("submit", (e) => { e.preventDefault(); this.send(); });
    this.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.send(); }
    });
    this.stopButton.addEventListener("click", () => this.stop());
    root.querySelector("#new-chat").addEventListener("click", () => this.newChat());
    let searchTimer = null;
    this.search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => this.refreshList(), 200);
    });
    root.querySelector("#export-md").addEventListener("click", () => this.exportAs("md"));
    root.querySelector("#export-json").addEventListener("click", () => this.exportAs("json"));
    const toggle = root.querySelector("#toggle-params");
    toggle.addEventListener("click", () => {
      const open = root.classList.toggle("params-open");
      toggle.setAttribute("aria-expanded", String(open));
    });
    root.querySelector("#close-params").addEventListener("click", () => {
      root.classList.remove("params-open");
      toggle.setAttribute("aria-expanded", "false");
    });
    this.title.addEventListener("dblclick", () => this.conversation && this.rename(this.conversation.id));
  }

  // Speak an answer: an <audio> element in the message plays it (its controls replay it).
  async readAloud(el, button) {
    const text = el.querySelector(".content").textContent; // the rendered text, without Markdown's marks
    const audio = document.createElement("audio");
    audio.controls = true;
    el.insertBefore(audio, el.querySelector(".message-footer"));
    button.disabled = true;
    button.textContent = "Reading…";
    const urls = [];
    this.spoken.push(urls);
    try {
      await speakInto(audio, text, urls);
      button.remove();
    } catch (e) {
      audio.remove();
      button.disabled = false;
      button.textContent = "Read aloud";
      toast(e.message);
    }
  }

  async start() {
    const served = await listModels();
    setServerContext(served.ctx_size);
    this.maxBodyBytes = served.max_body_bytes || 0;
    await Promise.all([this.params.refresh(""), this.refreshModels(), this.refreshList()]);
    this.params.apply("balanced");
    const last = localStorage.getItem("lokal.conversation");
    if (last) await this.open(last).catch(() => localStorage.removeItem("lokal.conversation"));
  }

  async refreshModels() {
    await modelOptions(this.model, this.conversation?.model);
  }

  busy() { return this.controller !== null; }

  stop() { this.controller?.abort(); }

  newChat() {
    this.conversation = null;
    localStorage.removeItem("lokal.conversation");
    this.title.textContent = "New chat";
    this.renderMessages();
    this.highlightCurrent();
    this.prompt.focus();
  }

  async refreshList() {
    const q = this.search.value.trim();
    const conversations = await getJSON(`/ui/api/conversations${q ? `?q=${encodeURIComponent(q)}` : ""}`);
    this.list.replaceChildren();
    for (const c of conversations) {
      const li = document.createElement("li");
      li.className = "conversation";
      li.dataset.id = c.id;
      const name = document.createElement("button");
      name.className = "conversation-name";
      name.textContent = c.title;
      name.title = c.title;
      name.addEventListener("click", () => { this.open(c.id); document.body.classList.remove("sidebar-open"); });
      const rename = document.createElement("button");
      rename.className = "icon-button rename";
      rename.textContent = "✎";
      rename.title = "Rename";
      rename.setAttribute("aria-label", `Rename ${c.title}`);
      rename.addEventListener("click", () => this.rename(c.id));
      const remove = document.createElement("button");
      remove.className = "icon-button delete";
      remove.textContent = "✕";
      remove.title = "Delete (click twice)";
      remove.setAttribute("aria-label", `Delete ${c.title}`);
      remove.addEventListener("click", () => this.remove(c.id, remove));
      li.append(name, rename, remove);
      this.list.append(li);
    }
    if (!conversations.length) {
      const li = document.createElement("li");
      li.className = "muted empty-list";
      li.textContent = q ? "No match." : "No conversations yet.";
      this.list.append(li);
    }
    this.highlightCurrent();
  }

  highlightCurrent() {
    for (const li of this.list.querySelectorAll("li.conversation")) {
      li.classList.toggle("current", li.dataset.id === this.conversation?.id);
    }
  }

  async open(id) {
    if (this.busy()) return;
    this.conversation = await getJSON(`/ui/api/conversations/${id}`);
    localStorage.setItem("lokal.conversation", id);
    this.title.textContent = this.conversation.title;
    this.system.value = this.conversation.system_prompt;
    if (Object.keys(this.conversation.params).length) this.params.set(this.conversation.params);
    if (this.conversation.model) await modelOptions(this.model, this.conversation.model);
    this.renderMessages();
    this.highlightCurrent();
  }

  rename(id) {
    const li = this.list.querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (!li) return;
    const name = li.querySelector(".conversation-name");
    const input = document.createElement("input");
    input.className = "rename-input";
    input.value = name.textContent;
    input.setAttribute("aria-label", "New name");
    name.replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      if (save && input.value.trim()) {
        const updated = await sendJSON("PATCH", `/ui/api/conversations/${id}`, { title: input.value.trim() });
        if (this.conversation?.id === id) { this.conversation.title = updated.title; this.title.textContent = updated.title; }
      }
      await this.refreshList();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); finish(true); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async remove(id, button) {
    if (!button.classList.contains("confirm")) {
      button.classList.add("confirm");
      button.textContent = "Delete?";
      setTimeout(() => { button.classList.remove("confirm"); button.textContent = "✕"; }, 3000);
      return;
    }
    await sendJSON("DELETE", `/ui/api/conversations/${id}`);
    if (this.conversation?.id === id) this.newChat();
    await this.refreshList();
  }

  exportAs(format) {
    if (!this.conversation) { toast("Nothing to export yet."); return; }
    const a = document.createElement("a");
    a.href = `/ui/api/conversations/${this.conversation.id}/export?format=${format}`;
    a.download = "";
    a.click();
  }

  renderMessages() {
    for (const urls of this.spoken) urls.forEach((url) => URL.revokeObjectURL(url));
    this.spoken = [];
    this.messagesEl.replaceChildren();
    const messages = this.conversation?.messages || [];
    if (!messages.length) {
      const hint = document.createElement("div");
      hint.className = "empty-hint";
      hint.id = "empty-hint";
      hint.textContent = "Start a conversation. Enter sends, Shift+Enter adds a line, Esc stops.";
      this.messagesEl.append(hint);
    }
    messages.forEach((m, i) => this.messagesEl.append(this.messageElement(m, i, i === messages.length - 1)));
    this.scrollDown();
  }

  messageElement(message, index, isLast) {
    const el = document.createElement("div");
    el.className = `message ${message.role}`;
    el.dataset.index = index;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = message.role === "assistant" ? (message.model || "assistant") : message.role;
    const content = document.createElement("div");
    content.className = "content markdown";
    if (message.role === "assistant") renderMarkdown(content, message.content);
    else content.textContent = message.content;
    const footer = document.createElement("div");
    footer.className = "message-footer";
    const stats = document.createElement("span");
    stats.className = "stats";
    stats.textContent = statsText(message.stats);
    footer.append(stats);
    if (message.role === "user") footer.append(this.actionButton("Edit", () => this.edit(el, index)));
    if (message.role === "assistant" && isLast) footer.append(this.actionButton("Regenerate", () => this.regenerate()));
    footer.append(this.actionButton("Copy", () => navigator.clipboard?.writeText(message.content)));
    if (message.role === "assistant" && message.content) {
      const read = this.actionButton("Read aloud", () => this.readAloud(el, read));
      footer.append(read);
    }
    el.append(role);
    if (message.images?.length) {
      const pictures = document.createElement("div");
      pictures.className = "attachments";
      message.images.forEach((url, i) => pictures.append(thumbnail(url, `Image ${i + 1}`)));
      el.append(pictures);
    }
    el.append(content, footer);
    return el;
  }

  actionButton(label, action) {
    const b = document.createElement("button");
    b.className = "link-button";
    b.textContent = label;
    b.addEventListener("click", action);
    return b;
  }

  scrollDown() { this.messagesEl.scrollTop = this.messagesEl.scrollHeight; }

  setBusy(busy) {
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
    document.body.classList.toggle("generating", busy);
  }

  async ensureConversation(firstText) {
    const settings = { model: this.model.value, system_prompt: this.system.value, params: this.params.get() };
    if (!this.conversation) {
      const title = Array.from(firstText.replace(/\s+/g, " ").trim()).slice(0, 48).join("") || "New chat";
      this.conversation = await sendJSON("POST", "/ui/api/conversations", { title, ...settings });
      this.conversation.messages = [];
      localStorage.setItem("lokal.conversation", this.conversation.id);
      this.title.textContent = this.conversation.title;
    } else {
      await sendJSON("PATCH", `/ui/api/conversations/${this.conversation.id}`, settings);
    }
  }

  async send() {
    const text = this.prompt.value.trim();
    if ((!text && !this.composer.images.length) || this.busy()) return;
    if (!this.model.value) { toast("No model: pull one on the Models page."); return; }
    this.prompt.value = "";
    const images = this.composer.take();
    try {
      await this.ensureConversation(text || "Image");
      let saved;
      try {
        saved = await sendJSON("POST", `/ui/api/conversations/${this.conversation.id}/messages`,
          { role: "user", content: text, images });
      } catch (e) { // not stored (too large, say): the message stays in the composer, with the reason
        if (!this.prompt.value) this.prompt.value = text;
        this.composer.restore(images);
        this.composer.showStatus(`Not sent: ${e.message}`, true);
        return;
      }
      this.conversation.messages.push(saved);
      this.renderMessages();
      await this.refreshList();
      await this.answer();
    } catch (e) {
      toast(e.message);
    }
  }

  async regenerate() {
    if (this.busy() || !this.conversation) return;
    const msgs = this.conversation.messages;
    if (!msgs.length || msgs[msgs.length - 1].role !== "assistant") return;
    this.conversation = await sendJSON("POST", `/ui/api/conversations/${this.conversation.id}/truncate`,
      { keep: msgs.length - 1 });
    this.renderMessages();
    await this.answer();
  }

  edit(el, index) {
    if (this.busy()) return;
    const content = el.querySelector(".content");
    const box = document.createElement("textarea");
    box.className = "edit-box";
    box.value = this.conversation.messages[index].content;
    const images = this.conversation.messages[index].images || []; // resent with the new text
    box.rows = Math.min(10, box.value.split("\n").length + 1);
    const save = this.actionButton("Send", async () => {
      const text = box.value.trim();
      if (!text && !images.length) return;
      const id = this.conversation.id;
      this.conversation = await sendJSON("POST", `/ui/api/conversations/${id}/truncate`, { keep: index });
      const saved = await sendJSON("POST", `/ui/api/conversations/${id}/messages`,
        { role: "user", content: text, images });
      this.conversation.messages.push(saved);
      this.renderMessages();
      await this.answer();
    });
    const cancel = this.actionButton("Cancel", () => this.renderMessages());
    box.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); save.click(); }
      if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); this.renderMessages(); }
    });
    content.replaceWith(box);
    el.querySelector(".message-footer").replaceChildren(save, cancel);
    box.focus();
  }

  // The request's messages: system prompt plus as much recent history as the context setting allows
  // (and, with images, as the server's body limit allows). A message with images is OpenAI's content
  // parts: the images as image_url parts with their data: URLs, then the text.
  history(params) {
    const budget = (params.num_ctx || 4096) - (params.max_tokens || 512);
    const byteBudget = this.maxBodyBytes ? this.maxBodyBytes * 0.9 : Infinity;
    const out = [];
    let used = this.system.value ? this.system.value.length / CHARS_PER_TOKEN : 0;
    let bytes = this.system.value.length;
    const msgs = this.conversation.messages;
    for (let i = msgs.length - 1; i >= 0; i -= 1) {
      const { role, content, images = [] } = msgs[i];
      const cost = content.length / CHARS_PER_TOKEN + 4 + images.length * IMAGE_TOKENS;
      const size = content.length + images.reduce((n, url) => n + url.length, 0);
      if (out.length && (used + cost > budget || bytes + size > byteBudget)) break;
      used += cost;
      bytes += size;
      if (!images.length) { out.unshift({ role, content }); continue; }
      const parts = images.map((url) => ({ type: "image_url", image_url: { url } }));
      if (content) parts.push({ type: "text", text: content });
      out.unshift({ role, content: parts });
    }
    if (this.system.value.trim()) out.unshift({ role: "system", content: this.system.value });
    return out;
  }

  async answer() {
    const params = this.params.get();
    const model = this.model.value;
    const el = this.messageElement({ role: "assistant", content: "", model, stats: {} }, -1, false);
    el.classList.add("streaming");
    const content = el.querySelector(".content");
    const stats = el.querySelector(".stats");
    this.messagesEl.querySelector("#empty-hint")?.remove();
    this.messagesEl.append(el);
    this.scrollDown();
    this.controller = new AbortController();
    this.setBusy(true);
    let pending = null;
    let result;
    try {
      result = await streamChat(
        { model, messages: this.history(params), ...requestFields(params) },
        (text) => {
          pending = text;
          requestAnimationFrame(() => {
            if (pending === null) return;
            const nearBottom = this.messagesEl.scrollHeight - this.messagesEl.scrollTop - this.messagesEl.clientHeight < 80;
            renderMarkdown(content, pending);
            pending = null;
            if (nearBottom) this.scrollDown();
          });
        },
        this.controller.signal,
      );
    } catch (e) { // the server's refusal (an image for a text-only model, say) stays in the conversation until the next turn
      el.className = "message error";
      el.querySelector(".role").textContent = `${model}: error`;
      content.textContent = e.message;
      el.querySelector(".message-footer").remove();
      this.controller = null;
      this.setBusy(false);
      return;
    }
    pending = null;
    this.controller = null;
    this.setBusy(false);
    const record = {
      ttft_s: result.ttft, tokens: result.tokens, tokens_per_second: result.tokensPerSecond,
      finish_reason: result.aborted ? "stopped" : result.finishReason,
    };
    renderMarkdown(content, result.text);
    stats.textContent = statsText(record);
    el.classList.remove("streaming");
    if (result.text || !result.aborted) {
      const saved = await sendJSON("POST", `/ui/api/conversations/${this.conversation.id}/messages`,
        { role: "assistant", content: result.text, model, stats: record });
      this.conversation.messages.push(saved);
    }
    this.renderMessages();
    this.refreshList();
  }
}

export function statsText(s) {
  if (!s || s.tokens === undefined) return "";
  const parts = [`${s.tokens} tokens`, `TTFT ${formatSeconds(s.ttft_s)}`];
  if (s.tokens_per_second) parts.push(`${s.tokens_per_second.toFixed(1)} tok/s`);
  if (s.finish_reason === "stopped") parts.push("stopped");
  else if (s.finish_reason === "length") parts.push("max tokens reached");
  return parts.join(" · ");
}
