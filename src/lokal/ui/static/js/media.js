// Audio and images on the chat page: transcribe an uploaded or recorded file (/v1/audio/transcriptions),
// speak an answer (/v1/audio/speech), and turn a picked, pasted or dropped picture into a data: URL.
import { authFetch, errorText, formatBytes, getJSON } from "./api.js";
import { listModels } from "./widgets.js";

export const MAX_IMAGES = 8; // per message: the conversation store's bound (lokal.ui.conversations)
const MAX_IMAGE_BYTES = 5 * 1024 * 1024; // the store's bound on one image
const MAX_EDGE = 2048; // longer sides are scaled down: vision encoders shrink pictures far below this anyway
const KEPT_TYPES = ["image/png", "image/jpeg"]; // sent as they are; others (WebP, GIF, …) become PNG,
// which llama.cpp's image loader reads
const SPEECH_CHARS = 4000; // one /v1/audio/speech request (its limit is 4096 characters)

// The first stored model of a kind ("speech-to-text", "text-to-speech"), or "".
export async function firstModel(kind) {
  const { models } = await listModels();
  return models.find((m) => m.kind === kind)?.name || "";
}

// --- speech to text ---

// The text spoken in an audio file (any format the server's FFmpeg reads); errors carry the server's message.
export async function transcribe(blob, filename) {
  const model = await firstModel("speech-to-text");
  if (!model) throw new Error("No speech-to-text model: pull one (e.g. whisper:tiny) on the Models page.");
  const { max_body_bytes: limit } = await listModels();
  if (limit && blob.size > limit) {
    throw new Error(`${filename} is ${formatBytes(blob.size)}; this server takes at most ${formatBytes(limit)} `
      + "(LOKAL_MAX_BODY_BYTES).");
  }
  const form = new FormData();
  form.append("file", blob, filename);
  form.append("model", model);
  const r = await authFetch("/v1/audio/transcriptions", { method: "POST", body: form });
  if (!r.ok) throw new Error(`Could not transcribe ${filename}: ${await errorText(r)}`);
  return (await r.json()).text.trim();
}

// Recording needs getUserMedia, which browsers offer only on https or localhost.
export function canRecord() {
  return Boolean(navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
}

// One microphone recording: `await Recording.start()`, later `await recording.stop()` → {blob, filename}.
export class Recording {
  static async start() {
    return new Recording(await navigator.mediaDevices.getUserMedia({ audio: true }));
  }

  constructor(stream) {
    this.stream = stream;
    this.chunks = [];
    this.recorder = new MediaRecorder(stream);
    this.recorder.addEventListener("dataavailable", (e) => { if (e.data.size) this.chunks.push(e.data); });
    this.stopped = new Promise((resolve) => this.recorder.addEventListener("stop", resolve, { once: true }));
    this.recorder.start();
  }

  async stop() {
    if (this.recorder.state !== "inactive") this.recorder.stop();
    await this.stopped;
    for (const track of this.stream.getTracks()) track.stop();
    const type = this.recorder.mimeType || "audio/webm";
    const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    return { blob: new Blob(this.chunks, { type }), filename: `recording.${ext}` };
  }
}

// --- text to speech ---

const voices = new Map(); // model → its first voice (asking loads the model, so once a page)

async function voiceOf(model) {
  if (!voices.has(model)) {
    const list = await getJSON(`/ui/api/voices?model=${encodeURIComponent(model)}`);
    if (!list.length) throw new Error(`${model} has no voice.`);
    voices.set(model, list[0]);
  }
  return voices.get(model);
}

// Pieces of at most SPEECH_CHARS characters, cut after a sentence (or a line, or a space) where one is near.
export function speechPieces(text) {
  const pieces = [];
  let rest = text.replace(/\s+/g, " ").trim();
  while (rest.length > SPEECH_CHARS) {
    const head = rest.slice(0, SPEECH_CHARS);
    const cut = Math.max(head.lastIndexOf(". "), head.lastIndexOf("! "), head.lastIndexOf("? "));
    const at = cut > SPEECH_CHARS / 2 ? cut + 1 : (head.lastIndexOf(" ") > 0 ? head.lastIndexOf(" ") : SPEECH_CHARS);
    pieces.push(rest.slice(0, at).trim());
    rest = rest.slice(at).trim();
  }
  if (rest) pieces.push(rest);
  return pieces;
}

async function synthesize(model, voice, input) {
  const r = await authFetch("/v1/audio/speech", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, voice, input, response_format: "mp3" }),
  });
  if (!r.ok) throw new Error(`Could not read the answer aloud: ${await errorText(r)}`);
  return r.blob();
}

// Speak `text` through an <audio> element: the first piece plays as soon as it is made, the others
// follow it, and once the last has played the element holds the first again, so that its controls
// replay the whole answer. Fills `urls` with the blob URLs made (the caller revokes them).
export async function speakInto(audio, text, urls = []) {
  const model = await firstModel("text-to-speech");
  if (!model) throw new Error("No text-to-speech model: pull one (e.g. piper:joe-medium) on the Models page.");
  const voice = await voiceOf(model);
  let next = 0;
  let idle = true; // the element has played everything it was given
  let done = false; // every piece is made
  const playNext = () => {
    if (next < urls.length) {
      audio.src = urls[next];
      next += 1;
      idle = false;
      audio.play().catch(() => {}); // a browser that blocks autoplay leaves the controls to the user
      return;
    }
    idle = true;
    if (done && urls.length > 1) { audio.src = urls[0]; next = 1; }
  };
  audio.addEventListener("ended", playNext);
  for (const piece of speechPieces(text)) {
    urls.push(URL.createObjectURL(await synthesize(model, voice, piece)));
    if (idle) playNext();
  }
  done = true;
  return urls;
}

// --- images ---

function readAsDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function encode(bitmap, width, height, type) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  if (type === "image/jpeg") { context.fillStyle = "#fff"; context.fillRect(0, 0, width, height); } // no alpha
  context.drawImage(bitmap, 0, 0, width, height);
  return new Promise((resolve) => canvas.toBlob(resolve, type, 0.9));
}

// A picture as the data: URL a chat request carries: PNG and JPEG files within the bounds as they
// are; larger ones scaled to MAX_EDGE, other formats converted to PNG (JPEG when PNG is too big).
export async function imageDataURL(file) {
  const name = file.name || "The pasted file";
  if (file.type && !file.type.startsWith("image/")) throw new Error(`${name} is not an image (${file.type}).`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new Error(`${name} could not be read as an image: it is damaged or in a format this browser cannot show.`);
  }
  try {
    const scale = Math.min(1, MAX_EDGE / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && KEPT_TYPES.includes(file.type) && file.size <= MAX_IMAGE_BYTES) return await readAsDataURL(file);
    const width = Math.max(1, Math.round(bitmap.width * scale));
    const height = Math.max(1, Math.round(bitmap.height * scale));
    let blob = await encode(bitmap, width, height, file.type === "image/jpeg" ? "image/jpeg" : "image/png");
    if (blob && blob.size > MAX_IMAGE_BYTES) blob = await encode(bitmap, width, height, "image/jpeg");
    if (!blob || blob.size > MAX_IMAGE_BYTES) {
      throw new Error(`${name} is still larger than ${formatBytes(MAX_IMAGE_BYTES)} at ${width}×${height}.`);
    }
    return await readAsDataURL(blob);
  } finally {
    bitmap.close();
  }
}

// The bytes a data: URL stands for (to keep a request under the server's body limit).
export function dataURLBytes(url) {
  return Math.floor((url.length - url.indexOf(",") - 1) * 3 / 4);
}
