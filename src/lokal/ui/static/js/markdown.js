// Model output is untrusted: Markdown -> HTML -> DOMPurify -> the DOM. Nothing else sets innerHTML.
// Raw HTML a model writes is shown as text (escaped by marked), and DOMPurify cleans what is left.

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "svg", "math"],
  FORBID_ATTR: ["style"],
};
let ready = false;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function setup() {
  if (ready) return;
  ready = true;
  window.marked.use({
    gfm: true,
    breaks: true,
    renderer: {
      html(token) { return escapeHtml(token.text); },
    },
  });
  // Links from a model open in a new tab and tell the target nothing about this page.
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
}

export function renderMarkdown(element, text) {
  setup();
  const html = window.marked.parse(text);
  element.innerHTML = window.DOMPurify.sanitize(html, PURIFY);
  for (const block of element.querySelectorAll("pre code")) {
    window.hljs.highlightElement(block);
  }
}
