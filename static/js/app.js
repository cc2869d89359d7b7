// The chat page: conversations, the model and voice pickers, streaming answers, read-aloud, settings.

import { APIError, createApi } from "./api.js";
import { chatListItems } from "./chatlist.js";
import { renderMarkdown, speakableBlocks } from "./markdown.js";
import { formatStats, messageElement, updateMessage } from "./messages.js";
import { ReadAloud } from "./speech.js";
import * as store from "./store.js";
import { newVersion, showVersion, snapshot } from "./versions.js";

const $ = (id) => document.getElementById(id);
const ui = Object.fromEntries(
  [
    "app", "sidebar", "backdrop", "toggle-sidebar", "new-chat", "chat-list", "chat-search", "undo", "undo-text",
    "undo-button", "model", "model-state", "voice-picker", "voice", "auto-read-field", "auto-read",
    "open-settings", "banner", "banner-text", "banner-settings", "banner-close", "messages", "thread", "empty",
    "composer", "prompt", "send", "stop", "status", "announcer", "player", "player-state", "player-audio",
    "speech-rate", "player-stop", "settings", "settings-form", "system-prompt", "chat-settings",
    "chat-system-prompt", "temperature", "max-tokens", "api-key", "enter-sends", "settings-cancel",
    "clear-chats", "export-json", "export-markdown", "import-chats",
  ].map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), $(id)]),
);

const STATE_LABELS = { ready: "ready", loading: "loading…", failed: "failed", unloaded: "not loaded" };
const POLL_MS = 1500;
const UNDO_MS = 10_000;
const SAVE_EVERY_MS = 1000;
const ORPHAN_MS = 5000; // a pending answer another tab has not saved for this long has stopped

const state = {
  settings: store.loadSettings(),
  chats: store.loadChats(),
  currentId: store.loadCurrentId(),
  chatModels: [],
  voices: [],
  modelsError: null, // why the models could not be listed (a wrong API key, an unreachable server)
  generations: new Map(), // chat id → {controller, reply} while an answer streams
  pollTimer: null,
  undo: null, // {chat, timer} after a delete
};

const api = createApi(() => state.settings.apiKey);
const reader = new ReadAloud(api, ui.playerAudio, showReading);

// ---------------------------------------------------------------- conversations

function currentChat() {
  return state.chats.find((c) => c.id === state.currentId) ?? null;
}

function persist(chat) {
  const dropped = store.saveChat(chat, state.chats);
  if (dropped.length) {
    state.chats = state.chats.filter((c) => !dropped.includes(c.id));
    showBanner("Browser storage is full: the oldest chats were removed.");
  }
  store.saveCurrentId(state.currentId);
}

function showChat(id, { keepSidebar = false } = {}) {
  store.saveDraft(state.currentId, ui.prompt.value);
  state.currentId = id;
  store.saveCurrentId(id);
  const chat = currentChat();
  if (chat?.model && state.chatModels.some((m) => m.id === chat.model)) {
    ui.model.value = chat.model;
    showModelState();
  }
  ui.prompt.value = store.loadDraft(id);
  resizePrompt();
  renderChatList();
  renderThread();
  showComposer();
  if (keepSidebar) return;
  closeSidebar();
  ui.prompt.focus();
}

function deleteChat(id) {
  const chat = state.chats.find((c) => c.id === id);
  if (!chat) return;
  state.generations.get(id)?.controller.abort();
  if (reader.messageId && chat.messages.some((m) => m.id === reader.messageId)) reader.stop();
  state.chats = state.chats.filter((c) => c.id !== id);
  store.deleteChat(id);
  // The sidebar stays open (on a phone it is a drawer): Undo is in it.
  if (state.currentId === id) showChat(null, { keepSidebar: true });
  else renderChatList();
  clearTimeout(state.undo?.timer);
  state.undo = { chat, timer: setTimeout(hideUndo, UNDO_MS) };
  ui.undoText.textContent = `Deleted “${chat.title || "New chat"}”.`;
  ui.undo.hidden = false;
  ui.undoButton.focus();
}

function hideUndo() {
  clearTimeout(state.undo?.timer);
  state.undo = null;
  ui.undo.hidden = true;
}

function undoDelete() {
  const chat = state.undo?.chat;
  hideUndo();
  if (!chat) return;
  store.restoreChat(chat);
  state.chats.push(chat);
  showChat(chat.id);
}

function renameChat(id, title) {
  const chat = state.chats.find((c) => c.id === id);
  const clean = title.trim();
  if (!chat || !clean || clean === chat.title) return;
  chat.title = clean;
  chat.metaRev = store.nextAt();
  persist(chat);
}

function renderChatList() {
  ui.chatList.replaceChildren(
    ...chatListItems(state.chats, {
      query: ui.chatSearch.value.trim(),
      currentId: state.currentId,
      busy: (id) => state.generations.has(id),
    }),
  );
}

function startRename(id) {
  const entry = ui.chatList.querySelector(`.chat-rename[data-id="${CSS.escape(id)}"]`)?.closest("li");
  const chat = state.chats.find((c) => c.id === id);
  if (!entry || !chat) return;
  const input = document.createElement("input");
  input.type = "text";
  input.className = "chat-rename-input";
  input.value = chat.title;
  input.setAttribute("aria-label", "Chat name");
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    if (save) renameChat(id, input.value);
    renderChatList();
    ui.chatList.querySelector(`.chat-open[data-id="${CSS.escape(id)}"]`)?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    else if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  entry.replaceChildren(input);
  input.focus();
  input.select();
}

// ---------------------------------------------------------------- thread

function canRead() {
  return state.voices.length > 0;
}

function renderThread() {
  const chat = currentChat();
  const messages = chat?.messages ?? [];
  ui.thread.replaceChildren(
    ...messages.map((message) => messageElement(shown(message), canRead(), readingPhase(message))),
  );
  ui.empty.hidden = messages.length > 0;
  scrollToEnd(true);
}

function articleOf(messageId) {
  return ui.thread.querySelector(`.message[data-id="${CSS.escape(messageId)}"]`);
}

function readingPhase(message) {
  return reader.messageId === message.id ? state.readingPhase : "idle";
}

function nearEnd() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
}

function scrollToEnd(force = false) {
  if (force || nearEnd()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---------------------------------------------------------------- sending

function requestMessages(chat, upTo) {
  const messages = [];
  const system = (chat.systemPrompt ?? "").trim() || state.settings.systemPrompt.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of chat.messages) {
    if (m === upTo) break;
    if (shown(m).pending || !m.content) continue;
    messages.push({ role: m.role, content: m.content });
  }
  return messages;
}

function abortableSleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(new DOMException("Aborted", "AbortError"));
      },
      { once: true },
    );
  });
}

/** Send or Stop, for the chat on screen. */
function showComposer() {
  const busy = state.generations.has(state.currentId);
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.thread.setAttribute("aria-busy", busy ? "true" : "false");
}

function chosenModel() {
  const model = ui.model.value;
  if (model) return model;
  // The list is empty because it could not be read: say why, not that no model exists.
  if (state.modelsError) showBanner(state.modelsError.message, state.modelsError.status === 401, "models");
  else showBanner("There is no chat model to answer: check the server's configuration.");
  return "";
}

async function sendMessage() {
  const text = ui.prompt.value.trim();
  if (!text || state.generations.has(state.currentId)) return;
  const model = chosenModel();
  if (!model) return;
  let chat = currentChat();
  if (!chat) {
    chat = store.newChat();
    state.chats.push(chat);
    state.currentId = chat.id;
    store.saveDraft(null, "");
  }
  if (!chat.title) {
    chat.title = store.titleFrom(text);
    chat.metaRev = store.nextAt();
  }
  chat.messages.push(store.newMessage({ role: "user", content: text }));
  ui.prompt.value = "";
  store.saveDraft(chat.id, "");
  resizePrompt();
  await answer(chat, model);
}

// ---------------------------------------------------------------- versions: edit, regenerate, continue

/** Show version `k` of a message and the conversation that followed it. */
function flipVersion(chat, message, k) {
  if (state.generations.has(chat.id) || !showVersion(chat, message, k)) return;
  persist(chat);
  renderThread();
  articleOf(message.id)?.querySelector(k < message.versions.length - 1 ? ".version-next" : ".version-prev")?.focus();
}

/** Ask again for an answer (failed, stopped, or simply not liked), with the model picked now. */
async function regenerate(message) {
  const chat = currentChat();
  if (!chat || state.generations.has(chat.id) || message?.role !== "assistant") return;
  const model = chosenModel();
  if (!model) return;
  // A failed or empty attempt is not worth keeping as a branch.
  const keep = Boolean(message.content) && !message.error;
  newVersion(chat, message, { content: "", model }, keep);
  await answer(chat, model, { reply: message });
}

/** Ask the model to go on from where a cut or stopped answer ended, appending to it. */
async function continueAnswer(message) {
  const chat = currentChat();
  if (!chat || state.generations.has(chat.id) || !message?.content) return;
  const model = chosenModel();
  if (!model) return;
  await answer(chat, model, { reply: message, continuing: true });
}

function startEdit(article, message) {
  const chat = currentChat();
  if (!chat || state.generations.has(chat.id) || article.querySelector(".edit-box")) return;
  const body = article.querySelector(".message-body");
  const box = document.createElement("div");
  box.className = "edit-box";
  const area = document.createElement("textarea");
  area.value = message.content;
  area.setAttribute("aria-label", "Edit message");
  const actions = document.createElement("div");
  actions.className = "edit-actions";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "btn btn-small btn-ghost";
  cancel.textContent = "Cancel";
  const send = document.createElement("button");
  send.type = "button";
  send.className = "btn btn-small btn-primary";
  send.textContent = "Save and send";
  actions.append(cancel, send);
  box.append(area, actions);
  body.hidden = true;
  article.querySelector(".user-meta").hidden = true;
  article.append(box);
  area.focus();
  const close = () => {
    box.remove();
    body.hidden = false;
    article.querySelector(".user-meta").hidden = false;
  };
  cancel.addEventListener("click", () => {
    close();
    article.querySelector(".edit").focus();
  });
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      cancel.click();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && enterSends()) {
      event.preventDefault();
      send.click();
    }
  });
  send.addEventListener("click", async () => {
    const text = area.value.trim();
    if (!text) return;
    const model = chosenModel();
    if (!model || state.generations.has(chat.id)) return;
    close();
    newVersion(chat, message, { content: text });
    await answer(chat, model);
  });
}

function contextLength(model) {
  return state.chatModels.find((m) => m.id === model)?.context_length ?? null;
}

/** Stream an answer: a new message at the end, or into `reply` (regenerated, or continued). */
async function answer(chat, model, { reply: existing = null, continuing = false } = {}) {
  hideBanner();
  const body = { model, messages: requestMessages(chat, existing ?? undefined) };
  if (continuing) {
    // The cut answer goes back as the last message, left open: the model goes on from its last token.
    body.messages.push({ role: "assistant", content: existing.content });
    body.continue_final_message = true;
  }
  const temperature = state.settings.temperature;
  const maxTokens = state.settings.maxTokens;
  if (temperature !== null && temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== null && maxTokens !== "") body.max_tokens = Number(maxTokens);
  let reply = existing;
  if (reply) {
    for (const key of ["stopped", "error", "finishReason", "stats"]) delete reply[key];
    Object.assign(reply, { model, pending: true, rev: store.nextAt() });
  } else {
    reply = store.newMessage({ role: "assistant", content: "", model, pending: true });
    chat.messages.push(reply);
  }
  if (chat.model !== model) {
    chat.model = model;
    chat.metaRev = store.nextAt();
  }
  chat.updated = Date.now();
  const controller = new AbortController();
  state.generations.set(chat.id, { controller, reply });
  persist(chat);
  renderChatList();
  if (chat.id === state.currentId) renderThread();
  showComposer();
  setStatus(`Answering with ${model}…`);
  const auto = ui.autoRead.checked && canRead();
  if (auto) startReading(reply);

  let frame = 0;
  const redraw = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      const article = articleOf(reply.id);
      if (article) {
        const follow = nearEnd();
        updateMessage(article, reply, readingPhase(reply));
        if (follow) scrollToEnd(true);
      }
      feedReader(reply);
    });
  };

  const started = performance.now();
  let firstAt = null;
  let pieces = 0;
  let usage = null;
  let lastSave = started;
  try {
    for (;;) {
      try {
        for await (const chunk of api.chat(body, controller.signal)) {
          const choice = chunk.choices?.[0];
          // Thinking models stream their reasoning apart from the answer (shown folded above it).
          const thought = choice?.delta?.reasoning_content ?? choice?.delta?.reasoning;
          if (thought) {
            firstAt ??= performance.now();
            reply.reasoning = (reply.reasoning ?? "") + thought;
            reply.waiting = "";
            redraw();
          }
          const delta = choice?.delta?.content;
          if (delta) {
            firstAt ??= performance.now();
            pieces += 1;
            reply.content += delta;
            reply.waiting = "";
            reply.rev = store.nextAt();
            redraw();
            if (performance.now() - lastSave > SAVE_EVERY_MS) {
              lastSave = performance.now();
              persist(chat);
            }
          }
          if (choice?.finish_reason) reply.finishReason = choice.finish_reason;
          if (chunk.usage) usage = chunk.usage;
        }
        break;
      } catch (error) {
        // A model that is still loading is not an error: wait for it, then ask again.
        if (error instanceof APIError && error.code === "model_loading" && !reply.content) {
          reply.waiting = `${model} is loading… the answer starts when it is ready.`;
          redraw();
          refreshModels();
          await abortableSleep(Math.min(5, Math.max(1, error.retryAfter ?? 2)) * 1000, controller.signal);
          continue;
        }
        throw error;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") reply.stopped = true;
    else reply.error = { message: error.message, code: error.code ?? null, status: error.status ?? null };
  } finally {
    if (frame) cancelAnimationFrame(frame);
    const ended = performance.now();
    const tokens = usage?.completion_tokens ?? pieces;
    if (tokens) {
      // Generation speed after the first token; over the whole request when that is too short to time.
      const afterFirst = firstAt === null ? 0 : (ended - firstAt) / 1000;
      const timed = tokens > 1 && afterFirst >= 0.05;
      const seconds = timed ? afterFirst : (ended - started) / 1000;
      const counted = timed ? tokens - 1 : tokens;
      reply.stats = {
        tokens,
        tokensPerSecond: seconds > 0.001 ? counted / seconds : null,
        firstTokenSeconds: firstAt === null ? null : (firstAt - started) / 1000,
        contextUsed: usage ? (usage.prompt_tokens ?? 0) + (usage.completion_tokens ?? 0) : null,
        contextLength: contextLength(model),
      };
    }
    delete reply.pending;
    delete reply.waiting;
    reply.rev = store.nextAt();
    if (reply.versions) reply.versions[reply.version] = snapshot(reply, []);
    chat.updated = Date.now();
    state.generations.delete(chat.id);
    persist(chat);
    const article = articleOf(reply.id);
    if (article) updateMessage(article, reply, readingPhase(reply));
    showComposer();
    renderChatList();
    finished(chat, reply);
  }
  if (reader.messageId === reply.id) {
    if (reply.error || reply.stopped) reader.stop();
    else feedReader(reply);
  }
}

/** Say how an answer ended, once, in the status line and to screen readers. */
function finished(chat, reply) {
  const here = chat.id === state.currentId;
  if (reply.error) {
    setStatus(`Error: ${reply.error.message}`);
    announce(`The answer failed: ${reply.error.message}`);
  } else if (reply.stopped) {
    setStatus("Stopped.");
  } else {
    setStatus(reply.stats ? `Last answer: ${formatStats(reply.stats)}` : "Done.");
    const text = speakableBlocks(renderMarkdown(reply.content)).join(" ");
    const where = here ? "" : ` in “${chat.title}”`;
    announce(`Answer from ${reply.model}${where}: ${text.length > 400 ? `${text.slice(0, 400)}…` : text}`);
  }
  if (reply.error?.status === 401) showBanner(reply.error.message, true);
  if (here) ui.prompt.focus();
}

function stopGenerating() {
  state.generations.get(state.currentId)?.controller.abort();
}

// ---------------------------------------------------------------- read-aloud

function splitVoice(value) {
  const at = value.indexOf("\u001f");
  return at < 0 ? ["", ""] : [value.slice(0, at), value.slice(at + 1)];
}

function findMessage(id) {
  for (const chat of state.chats) {
    const message = chat.messages.find((m) => m.id === id);
    if (message) return message;
  }
  return null;
}

function startReading(message) {
  const voice = splitVoice(ui.voice.value);
  if (!voice[0]) return;
  reader.start(message.id, voice);
  feedReader(message);
}

function feedReader(message) {
  if (reader.messageId !== message.id) return;
  reader.feed(speakableBlocks(renderMarkdown(message.content)), !message.pending);
}

function toggleReading(message) {
  if (reader.messageId === message.id) reader.stop();
  else startReading(message);
}

const PHASE_TEXT = { preparing: "Preparing audio…", playing: "Reading aloud", paused: "Paused" };

/** The reader's state changed: one player, one pressed button. */
function showReading({ messageId, phase, error }) {
  state.readingPhase = phase;
  ui.player.hidden = phase === "idle";
  ui.player.dataset.phase = phase;
  ui.playerState.textContent = PHASE_TEXT[phase] ?? "";
  for (const article of ui.thread.querySelectorAll(".message-assistant")) {
    const message = findMessage(article.dataset.id);
    if (message) updateMessage(article, message, article.dataset.id === messageId ? phase : "idle");
  }
  if (error) showBanner(`Read-aloud failed: ${error.message}`, error.status === 401);
}

// ---------------------------------------------------------------- models and voices

function optionLabel(card) {
  return card.state === "ready" ? card.id : `${card.id} (${STATE_LABELS[card.state] ?? card.state})`;
}

function showModelState() {
  const card = state.chatModels.find((m) => m.id === ui.model.value);
  const badge = ui.modelState;
  if (!card) {
    badge.dataset.state = "none";
    badge.textContent = "";
    badge.title = "";
    return;
  }
  badge.dataset.state = card.state;
  badge.textContent = STATE_LABELS[card.state] ?? card.state;
  badge.title = card.error ? `${card.id} failed to load: ${card.error}` : "";
  if (card.state === "failed" && card.error) badge.textContent = `failed: ${card.error}`;
}

function fillModels(cards) {
  state.chatModels = cards.filter((m) => m.kind === "chat");
  const wanted = ui.model.value || currentChat()?.model || state.settings.model;
  ui.model.replaceChildren(
    ...state.chatModels.map((card) => {
      const option = new Option(optionLabel(card), card.id);
      option.dataset.state = card.state;
      return option;
    }),
  );
  if (!state.chatModels.length) {
    ui.model.append(new Option("no chat models", ""));
    ui.model.disabled = true;
  } else {
    ui.model.disabled = false;
    const ready = state.chatModels.find((m) => m.state === "ready");
    const pick = state.chatModels.some((m) => m.id === wanted) ? wanted : (ready ?? state.chatModels[0]).id;
    ui.model.value = pick;
  }
  showModelState();
}

function fillVoices(voices, speechModels) {
  const usable = voices.filter((v) => speechModels.some((m) => m.id === v.model && m.state !== "failed"));
  state.voices = usable;
  const wanted = ui.voice.value || state.settings.voice;
  const groups = new Map();
  for (const voice of usable) {
    if (!groups.has(voice.model)) groups.set(voice.model, []);
    groups.get(voice.model).push(voice);
  }
  ui.voice.replaceChildren(
    ...[...groups].map(([model, list]) => {
      const group = document.createElement("optgroup");
      const card = speechModels.find((m) => m.id === model);
      group.label = card && card.state !== "ready" ? `${model} (${STATE_LABELS[card.state] ?? card.state})` : model;
      for (const voice of list) {
        const label = voice.language ? `${voice.name} · ${voice.language}` : voice.name;
        group.append(new Option(label, `${voice.model}\u001f${voice.id}`));
      }
      return group;
    }),
  );
  const values = usable.map((v) => `${v.model}\u001f${v.id}`);
  if (values.includes(wanted)) ui.voice.value = wanted;
  const has = usable.length > 0;
  ui.voicePicker.hidden = !has;
  ui.autoReadField.hidden = !has;
  for (const button of ui.thread.querySelectorAll(".read-aloud")) button.hidden = !has;
}

async function refreshModels() {
  clearTimeout(state.pollTimer);
  let cards;
  try {
    cards = (await api.json("v1/models")).data ?? [];
  } catch (error) {
    state.modelsError = error;
    showBanner(`Cannot list the models: ${error.message}`, error.status === 401, "models");
    // The server may be restarting: look again, and clear the message once it answers.
    if (error.code === "network_error" || error.status >= 500) {
      state.pollTimer = setTimeout(refreshModels, POLL_MS * 2);
    }
    return;
  }
  state.modelsError = null;
  if (ui.banner.dataset.source === "models") hideBanner();
  fillModels(cards);
  const speechModels = cards.filter((m) => m.kind === "speech");
  if (speechModels.length) {
    try {
      fillVoices((await api.json("v1/audio/voices")).voices ?? [], speechModels);
    } catch (error) {
      fillVoices([], []);
      showBanner(`Cannot list the voices: ${error.message}`, error.status === 401, "models");
    }
  } else {
    fillVoices([], []);
  }
  // Poll while something loads, so "loading…" turns into "ready" (or "failed") by itself.
  if (cards.some((m) => m.state === "loading")) state.pollTimer = setTimeout(refreshModels, POLL_MS);
}

// ---------------------------------------------------------------- banner, status, sidebar

function showBanner(text, offerSettings = false, source = "") {
  ui.banner.dataset.source = source;
  ui.bannerText.textContent = text;
  ui.bannerSettings.hidden = !offerSettings;
  ui.banner.hidden = false;
}

function hideBanner() {
  ui.banner.hidden = true;
}

function setStatus(text) {
  ui.status.textContent = text;
}

function announce(text) {
  // Emptied first so that the same words twice are still read out.
  ui.announcer.textContent = "";
  setTimeout(() => {
    ui.announcer.textContent = text;
  }, 50);
}

function openSidebar() {
  ui.app.classList.add("sidebar-open");
  ui.backdrop.hidden = false;
  ui.toggleSidebar.setAttribute("aria-expanded", "true");
  ui.sidebar.querySelector("button")?.focus();
}

function closeSidebar(returnFocus = false) {
  if (!ui.app.classList.contains("sidebar-open")) return;
  ui.app.classList.remove("sidebar-open");
  ui.backdrop.hidden = true;
  ui.toggleSidebar.setAttribute("aria-expanded", "false");
  if (returnFocus) ui.toggleSidebar.focus();
}

function resizePrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 240)}px`;
}

/** Whether Enter sends: by default not on touch screens, whose keyboards have no Shift+Enter. */
function enterSends() {
  const chosen = state.settings.enterSends;
  return typeof chosen === "boolean" ? chosen : !matchMedia("(pointer: coarse)").matches;
}

// ---------------------------------------------------------------- settings, export, import

function openSettings() {
  const s = state.settings;
  const chat = currentChat();
  ui.systemPrompt.value = s.systemPrompt;
  ui.chatSettings.hidden = !chat;
  ui.chatSystemPrompt.value = chat?.systemPrompt ?? "";
  ui.temperature.value = s.temperature ?? "";
  ui.maxTokens.value = s.maxTokens ?? "";
  ui.apiKey.value = s.apiKey;
  ui.enterSends.checked = enterSends();
  ui.exportMarkdown.disabled = !chat;
  ui.settings.showModal();
}

function saveSettingsForm() {
  const number = (input) => (input.value.trim() === "" || !input.checkValidity() ? null : Number(input.value));
  const keyChanged = state.settings.apiKey !== ui.apiKey.value.trim();
  Object.assign(state.settings, {
    systemPrompt: ui.systemPrompt.value,
    temperature: number(ui.temperature),
    maxTokens: number(ui.maxTokens),
    apiKey: ui.apiKey.value.trim(),
    enterSends: ui.enterSends.checked,
  });
  store.saveSettings(state.settings);
  const chat = currentChat();
  if (chat && (chat.systemPrompt ?? "") !== ui.chatSystemPrompt.value) {
    chat.systemPrompt = ui.chatSystemPrompt.value;
    chat.metaRev = store.nextAt();
    persist(chat);
  }
  if (keyChanged) refreshModels();
}

function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function fileName(title, ext) {
  const base = (title || "chat").replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-|-$/g, "").slice(0, 60);
  return `${base || "chat"}.${ext}`;
}

async function importChats(file) {
  let chats;
  try {
    chats = store.chatsFromExport(JSON.parse(await file.text()));
  } catch (error) {
    showBanner(`Cannot import ${file.name}: ${error.message}`);
    return;
  }
  if (!chats.length) {
    showBanner(`${file.name} holds no chats.`);
    return;
  }
  for (const chat of chats) {
    state.chats.push(chat);
    persist(chat);
  }
  renderChatList();
  setStatus(`Imported ${chats.length} chat${chats.length === 1 ? "" : "s"}.`);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // Not a secure context (a LAN address over http): fall back to a hidden selection.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => {
    button.textContent = label;
  }, 1200);
}

// ---------------------------------------------------------------- other tabs

/** Another tab saved a chat: fold its copy into ours (nothing of either is lost) and show it. */
function chatChangedElsewhere(id) {
  const stored = store.loadChat(id);
  const mine = state.chats.find((c) => c.id === id);
  if (!stored) {
    if (mine && store.isDeleted(id) && !state.generations.has(id)) {
      state.chats = state.chats.filter((c) => c !== mine);
      if (state.currentId === id) showChat(null);
    }
  } else if (mine) {
    // Two tabs can save at the same moment, the second over the first: whoever holds more saves again.
    const ahead = store.isAhead(mine, stored);
    store.mergeChat(mine, stored);
    if (ahead) persist(mine);
  } else {
    state.chats.push(stored);
  }
  renderChatList();
  if (id === state.currentId) {
    const follow = nearEnd();
    ui.thread.replaceChildren(
      ...(currentChat()?.messages ?? []).map((m) => messageElement(shown(m), canRead(), readingPhase(m))),
    );
    ui.empty.hidden = Boolean(currentChat()?.messages.length);
    if (follow) scrollToEnd(true);
  }
}

/** A message as this tab shows it: an answer another tab stopped saving long ago is no longer pending. */
function shown(message) {
  if (!message.pending || [...state.generations.values()].some((g) => g.reply === message)) return message;
  if (Date.now() - (message.rev ?? 0) < ORPHAN_MS) return message;
  return { ...message, pending: false, stopped: true };
}

// ---------------------------------------------------------------- wiring

function wire() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && enterSends()) {
      event.preventDefault();
      sendMessage();
    }
  });
  ui.prompt.addEventListener("input", () => {
    resizePrompt();
    store.saveDraft(state.currentId, ui.prompt.value);
  });
  ui.stop.addEventListener("click", stopGenerating);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.generations.has(state.currentId) && !ui.settings.open) stopGenerating();
    else if (event.key === "Escape") closeSidebar(true);
  });
  ui.newChat.addEventListener("click", () => showChat(null));
  ui.chatSearch.addEventListener("input", renderChatList);
  ui.chatList.addEventListener("click", (event) => {
    const target = event.target.closest("button");
    if (!target) return;
    if (target.classList.contains("chat-open")) showChat(target.dataset.id);
    else if (target.classList.contains("chat-rename")) startRename(target.dataset.id);
    else if (target.classList.contains("chat-delete")) deleteChat(target.dataset.id);
  });
  ui.undoButton.addEventListener("click", undoDelete);
  ui.thread.addEventListener("click", (event) => {
    const article = event.target.closest(".message");
    if (!article) return;
    const message = currentChat()?.messages.find((m) => m.id === article.dataset.id);
    if (event.target.closest(".copy-code")) {
      const button = event.target.closest(".copy-code");
      copyText(button.closest(".code-block").querySelector("pre").textContent, button);
    } else if (event.target.closest(".copy-answer") && message) {
      copyText(message.content, event.target.closest(".copy-answer"));
    } else if (event.target.closest(".read-aloud") && message) {
      toggleReading(message);
    } else if (event.target.closest(".retry") && message) {
      regenerate(message);
    } else if (event.target.closest(".continue") && message) {
      continueAnswer(message);
    } else if (event.target.closest(".edit") && message) {
      startEdit(article, message);
    } else if (event.target.closest(".version-prev") && message) {
      flipVersion(currentChat(), message, message.version - 1);
    } else if (event.target.closest(".version-next") && message) {
      flipVersion(currentChat(), message, message.version + 1);
    }
  });
  ui.playerStop.addEventListener("click", () => reader.stop());
  ui.speechRate.value = String(state.settings.speechRate ?? 1);
  reader.setRate(Number(ui.speechRate.value) || 1);
  ui.speechRate.addEventListener("change", () => {
    state.settings.speechRate = Number(ui.speechRate.value);
    store.saveSettings(state.settings);
    reader.setRate(state.settings.speechRate);
  });
  ui.model.addEventListener("change", () => {
    state.settings.model = ui.model.value;
    store.saveSettings(state.settings);
    showModelState();
    const card = state.chatModels.find((m) => m.id === ui.model.value);
    if (card?.state === "loading") refreshModels();
  });
  ui.voice.addEventListener("change", () => {
    state.settings.voice = ui.voice.value;
    store.saveSettings(state.settings);
  });
  ui.autoRead.checked = Boolean(state.settings.autoRead);
  ui.autoRead.addEventListener("change", () => {
    state.settings.autoRead = ui.autoRead.checked;
    store.saveSettings(state.settings);
  });
  ui.toggleSidebar.addEventListener("click", () => {
    if (ui.app.classList.contains("sidebar-open")) closeSidebar(true);
    else openSidebar();
  });
  ui.backdrop.addEventListener("click", () => closeSidebar(true));
  ui.openSettings.addEventListener("click", openSettings);
  ui.bannerSettings.addEventListener("click", openSettings);
  ui.bannerClose.addEventListener("click", hideBanner);
  ui.settingsCancel.addEventListener("click", () => ui.settings.close());
  ui.settingsForm.addEventListener("submit", saveSettingsForm);
  ui.exportJson.addEventListener("click", () => {
    const chats = state.chats.map((c) => ({ ...c, messages: c.messages.filter((m) => !m.pending) }));
    download("ai-stack-chats.json", "application/json", JSON.stringify({ version: 2, chats }, null, 2));
  });
  ui.exportMarkdown.addEventListener("click", () => {
    const chat = currentChat();
    if (chat) download(fileName(chat.title, "md"), "text/markdown", store.chatMarkdown(chat));
  });
  ui.importChats.addEventListener("change", async () => {
    const [file] = ui.importChats.files;
    ui.importChats.value = "";
    if (!file) return;
    ui.settings.close();
    await importChats(file);
  });
  ui.clearChats.addEventListener("click", () => {
    if (!window.confirm("Delete every chat kept in this browser?")) return;
    reader.stop();
    for (const g of state.generations.values()) g.controller.abort();
    for (const chat of state.chats) store.deleteChat(chat.id);
    state.chats = [];
    showChat(null);
    ui.settings.close();
  });
  window.addEventListener("pagehide", () => {
    // A reload or a closed tab ends its answers: keep what arrived, marked stopped, for every tab to see.
    for (const [id, generation] of state.generations) {
      const chat = state.chats.find((c) => c.id === id);
      Object.assign(generation.reply, { pending: false, stopped: true, rev: store.nextAt() });
      if (chat) persist(chat);
    }
  });
  window.addEventListener("storage", (event) => {
    if (store.isChatKey(event.key)) chatChangedElsewhere(store.chatIdOfKey(event.key));
  });
}

wire();
if (state.currentId && !currentChat()) state.currentId = null;
ui.prompt.value = store.loadDraft(state.currentId);
resizePrompt();
renderChatList();
renderThread();
refreshModels();
document.documentElement.dataset.ready = "true";
