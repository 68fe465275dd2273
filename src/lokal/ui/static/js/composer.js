// The chat composer's attachments: images picked, pasted or dropped (thumbnails to remove before
// sending), and audio (a file, or a microphone recording) transcribed into the message box. Progress
// and errors go to the status line over the message box.
import { MAX_IMAGES, Recording, canRecord, imageDataURL, transcribe } from "./media.js";

const AUDIO_NAME = /\.(flac|m4a|mp3|mp4|mpeg|mpga|oga|ogg|opus|wav|webm)$/i;

export class ComposerMedia {
  constructor(root, prompt) {
    this.prompt = prompt;
    this.images = []; // data: URLs of the images going with the next message
    this.imagesEl = root.querySelector("#attachments");
    this.status = root.querySelector("#composer-status");
    this.recordButton = root.querySelector("#record");
    this.recording = null;
    const imageInput = root.querySelector("#image-input");
    const audioInput = root.querySelector("#audio-input");
    root.querySelector("#attach-image").addEventListener("click", () => imageInput.click());
    root.querySelector("#attach-audio").addEventListener("click", () => audioInput.click());
    imageInput.addEventListener("change", () => {
      const files = [...imageInput.files];
      imageInput.value = "";
      this.attachImages(files);
    });
    audioInput.addEventListener("change", () => {
      const [file] = audioInput.files;
      audioInput.value = "";
      if (file) this.transcribeInto(file, file.name);
    });
    if (canRecord()) this.recordButton.addEventListener("click", () => this.toggleRecording());
    else {
      this.recordButton.disabled = true;
      this.recordButton.title = "Recording needs the microphone, which browsers allow only on https or localhost";
    }
    this.prompt.addEventListener("paste", (e) => {
      const files = [...(e.clipboardData?.files || [])];
      if (files.length) { e.preventDefault(); this.takeFiles(files); }
    });
    const main = root.querySelector(".chat-main");
    main.addEventListener("dragover", (e) => {
      if (!e.dataTransfer?.types.includes("Files")) return;
      e.preventDefault();
      main.classList.add("dropping");
    });
    main.addEventListener("dragleave", (e) => { if (!main.contains(e.relatedTarget)) main.classList.remove("dropping"); });
    main.addEventListener("drop", (e) => {
      main.classList.remove("dropping");
      const files = [...(e.dataTransfer?.files || [])];
      if (files.length) { e.preventDefault(); this.takeFiles(files); }
    });
  }

  // The attached images, for the message being sent; the composer is empty of them after.
  take() {
    const images = this.images;
    this.images = [];
    this.renderImages();
    this.showStatus("");
    return images;
  }

  // Put back images a message could not be stored with.
  restore(images) {
    this.images = images;
    this.renderImages();
  }

  // A line over the prompt: progress ("Transcribing…") or, with error, what went wrong until the next action.
  showStatus(text, error = false) {
    this.status.textContent = text;
    this.status.classList.toggle("error", error);
    this.status.hidden = !text;
  }

  // Dropped or pasted files: images are attached, an audio file is transcribed into the prompt.
  takeFiles(files) {
    const images = files.filter((f) => f.type.startsWith("image/"));
    const audio = files.filter((f) => /^(audio|video)\//.test(f.type) || AUDIO_NAME.test(f.name));
    const other = files.filter((f) => !images.includes(f) && !audio.includes(f));
    const refused = other.length ? `${other.map((f) => f.name).join(", ")}: neither an image nor an audio file.` : "";
    if (images.length) this.attachImages(images, refused);
    else if (refused) this.showStatus(refused, true);
    if (audio.length) this.transcribeInto(audio[0], audio[0].name);
  }

  async attachImages(files, refused = "") {
    let error = refused;
    for (const file of files) {
      if (this.images.length >= MAX_IMAGES) { error = `A message holds at most ${MAX_IMAGES} images.`; break; }
      try {
        this.images.push(await imageDataURL(file));
      } catch (e) {
        error = e.message;
      }
    }
    this.showStatus(error, Boolean(error));
    this.renderImages();
  }

  renderImages() {
    this.imagesEl.replaceChildren(...this.images.map((url, i) => {
      const item = document.createElement("div");
      item.className = "attachment";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "✕";
      remove.setAttribute("aria-label", `Remove image ${i + 1}`);
      remove.addEventListener("click", () => { this.images.splice(i, 1); this.renderImages(); });
      item.append(thumbnail(url, `Attached image ${i + 1}`), remove);
      return item;
    }));
    this.imagesEl.hidden = !this.images.length;
  }

  // Transcribe an audio file (or a recording) and add its text to the prompt.
  async transcribeInto(blob, filename) {
    this.showStatus(`Transcribing ${filename}…`);
    try {
      const text = await transcribe(blob, filename);
      if (!text) { this.showStatus(`No speech was heard in ${filename}.`, true); return; }
      const before = this.prompt.value.trimEnd();
      this.prompt.value = before ? `${before} ${text}` : text;
      this.showStatus("");
      this.prompt.focus();
    } catch (e) {
      this.showStatus(e.message, true);
    }
  }

  async toggleRecording() {
    if (this.recording) {
      const recording = this.recording;
      this.recording = null;
      this.recordButton.classList.remove("recording");
      this.recordButton.textContent = "● Record";
      const { blob, filename } = await recording.stop();
      await this.transcribeInto(blob, filename);
      return;
    }
    try {
      this.recording = await Recording.start();
    } catch (e) {
      this.showStatus(`The microphone could not be opened: ${e.message}`, true);
      return;
    }
    this.recordButton.classList.add("recording");
    this.recordButton.textContent = "■ Stop recording";
    this.showStatus("Recording… press Stop recording to transcribe it into the message.");
  }
}

export function thumbnail(url, alt) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = url;
  img.alt = alt;
  return img;
}
