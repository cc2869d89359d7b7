// One message of the thread as an <article>: built once, updated in place while its answer streams.

import { renderMarkdown } from "./markdown.js";

function element(tag, className, text = "") {
  const node = document.createElement(tag);
  node.className = className;
  if (text) node.textContent = text;
  return node;
}

function button(className, text, label = "") {
  const node = element("button", `btn btn-small ${className}`, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  return node;
}

/** "N tokens · X tokens/s · first token T s · context U / L" for an answer's stats. */
export function formatStats(stats) {
  if (!stats) return "";
  const parts = [`${stats.tokens} token${stats.tokens === 1 ? "" : "s"}`];
  if (stats.tokensPerSecond) parts.push(`${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  if (typeof stats.firstTokenSeconds === "number") parts.push(`first token ${stats.firstTokenSeconds.toFixed(2)} s`);
  if (stats.contextUsed) {
    const of = stats.contextLength ? ` / ${stats.contextLength}` : "";
    parts.push(`context ${stats.contextUsed}${of}`);
  }
  return parts.join(" · ");
}

const READ_LABELS = {
  idle: "Read aloud",
  preparing: "Preparing audio…",
  playing: "Stop reading",
  paused: "Stop reading",
};

/** The article of a message; `canRead` shows its read-aloud button, `phase` the page's reader on it. */
export function messageElement(message, canRead, phase = "idle") {
  const article = element("article", `message message-${message.role}`);
  article.dataset.id = message.id;
  const who = element("h2", "message-role", message.role === "user" ? "You" : message.model || "Assistant");
  const body = element("div", message.role === "user" ? "message-body plain" : "message-body markdown");
  article.append(who);
  if (message.role === "assistant") {
    // Reasoning is untrusted model text too: shown as plain text, folded.
    const reasoning = element("details", "message-reasoning");
    reasoning.hidden = true;
    reasoning.append(element("summary", "", "Thinking"), element("div", "reasoning-text"));
    article.append(reasoning);
  }
  article.append(body);
  if (message.role === "user") {
    const meta = element("div", "message-meta user-meta");
    meta.append(versionSwitch(), button("btn-ghost edit", "Edit", "Edit and resend"));
    article.append(meta);
  }
  if (message.role === "assistant") {
    // Not an alert: re-rendering the thread would announce old errors again (the status line says it once).
    const error = element("p", "message-error");
    error.hidden = true;
    const meta = element("div", "message-meta");
    const actions = element("span", "message-actions");
    const read = button("btn-ghost read-aloud", "Read aloud");
    read.hidden = !canRead;
    actions.append(button("btn-ghost copy-answer", "Copy", "Copy answer"), read);
    meta.append(
      versionSwitch(),
      button("btn-ghost retry", "Retry"),
      button("btn-ghost continue", "Continue", "Continue this answer"),
      element("span", "message-stats"),
      actions,
    );
    article.append(error, meta);
  }
  updateMessage(article, message, phase);
  return article;
}

/** "‹ 2 / 3 ›": flips between the versions of a message (edits, regenerated answers). */
function versionSwitch() {
  const box = element("span", "versions");
  box.hidden = true;
  box.append(
    button("btn-ghost version-prev", "‹", "Previous version"),
    element("span", "version-label"),
    button("btn-ghost version-next", "›", "Next version"),
  );
  return box;
}

function showVersions(article, message) {
  const box = article.querySelector(".versions");
  const count = message.versions?.length ?? 0;
  box.hidden = count < 2 || Boolean(message.pending);
  if (box.hidden) return;
  const at = (message.version ?? 0) + 1;
  box.querySelector(".version-label").textContent = `${at} / ${count}`;
  box.querySelector(".version-prev").disabled = at <= 1;
  box.querySelector(".version-next").disabled = at >= count;
}

function note(text) {
  return element("p", "typing", text);
}

/** Show the message's current text, state, error, stats and read-aloud phase in its article. */
export function updateMessage(article, message, phase = "idle") {
  const body = article.querySelector(".message-body");
  if (message.role === "user") {
    body.textContent = message.content;
    showVersions(article, message);
    return;
  }
  showVersions(article, message);
  const reasoning = article.querySelector(".message-reasoning");
  reasoning.hidden = !message.reasoning;
  if (message.reasoning) {
    reasoning.querySelector(".reasoning-text").textContent = message.reasoning;
    reasoning.querySelector("summary").textContent =
      message.pending && !message.content ? "Thinking…" : "Thought";
  }
  if (message.content) body.replaceChildren(renderMarkdown(message.content));
  else if (message.pending && message.reasoning) body.replaceChildren();
  else if (message.pending) body.replaceChildren(note(message.waiting || "Thinking…"));
  else if (message.error) body.replaceChildren();
  else body.replaceChildren(note(message.stopped ? "Stopped before any text." : "The model gave no text."));
  article.classList.toggle("pending", Boolean(message.pending));
  article.classList.toggle("can-retry", Boolean(message.error || message.stopped));
  const retry = article.querySelector(".retry");
  retry.textContent = message.error || message.stopped ? "Retry" : "Regenerate";
  const read = article.querySelector(".read-aloud");
  read.textContent = READ_LABELS[phase] ?? READ_LABELS.idle;
  read.setAttribute("aria-pressed", phase === "idle" ? "false" : "true");
  const error = article.querySelector(".message-error");
  error.hidden = !message.error;
  error.textContent = message.error ? message.error.message : "";
  const notes = [formatStats(message.stats)];
  if (message.stopped) notes.push("stopped");
  if (message.finishReason === "length") notes.push("cut at max tokens");
  article.querySelector(".message-stats").textContent = notes.filter(Boolean).join(" · ");
  // While streaming only Read aloud shows: speech can follow the answer as it is written.
  article.querySelector(".message-meta").hidden = Boolean(message.pending) && phase === "idle" && !message.content;
  article.querySelector(".retry").hidden = Boolean(message.pending);
  const cut = message.finishReason === "length" || message.stopped;
  article.querySelector(".continue").hidden = !(cut && message.content && !message.pending);
  article.querySelector(".copy-answer").hidden = Boolean(message.pending);
  article.querySelector(".message-actions").hidden = !message.content;
}
