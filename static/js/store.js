// Conversations, drafts and settings, kept in this browser's localStorage.
//
// Each chat has its own key, and every save merges with what is stored: two tabs writing the same chat keep
// both tabs' messages (union by message id, the newer copy of a message wins, removals are remembered).

const CHAT_PREFIX = "ai-stack.chat.v2.";
const DELETED = "ai-stack.deleted-chats.v2";
const DRAFTS = "ai-stack.drafts.v2";
const OLD_CHATS = "ai-stack.chats.v1";
const CURRENT = "ai-stack.current-chat.v1";
const SETTINGS = "ai-stack.settings.v1";
const MAX_DELETED = 500;
const MAX_DRAFTS = 50;

const DEFAULT_SETTINGS = {
  systemPrompt: "",
  temperature: null,
  maxTokens: null,
  apiKey: "",
  model: "",
  voice: "",
  autoRead: false,
  speechRate: 1,
};

export const isChatKey = (key) => typeof key === "string" && key.startsWith(CHAT_PREFIX);
export const chatIdOfKey = (key) => key.slice(CHAT_PREFIX.length);

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

export function uid() {
  return globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

export function loadSettings() {
  const saved = read(SETTINGS, {});
  return { ...DEFAULT_SETTINGS, ...(saved && typeof saved === "object" ? saved : {}) };
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}

/** Give a message loaded from an older version the fields merging needs. */
function normalize(chat) {
  chat.removed ??= [];
  chat.created ??= chat.updated ?? Date.now();
  chat.messages.forEach((m, i) => {
    m.id ??= `${chat.id}-${i}`;
    m.at ??= (chat.created ?? 0) + i;
    m.rev ??= 0;
  });
  return chat;
}

function valid(chat) {
  return chat && typeof chat.id === "string" && Array.isArray(chat.messages);
}

function deletedIds() {
  const list = read(DELETED, []);
  return new Set(Array.isArray(list) ? list : []);
}

/** Move chats saved by the previous version (one array under one key) to one key per chat. */
function migrate() {
  const old = read(OLD_CHATS, null);
  if (!Array.isArray(old)) return;
  for (const chat of old.filter(valid)) {
    try {
      localStorage.setItem(CHAT_PREFIX + chat.id, JSON.stringify(normalize(chat)));
    } catch {
      break;
    }
  }
  localStorage.removeItem(OLD_CHATS);
}

export function loadChat(id) {
  const chat = read(CHAT_PREFIX + id, null);
  return valid(chat) ? normalize(chat) : null;
}

export function loadChats() {
  migrate();
  const gone = deletedIds();
  const chats = [];
  for (let i = 0; i < localStorage.length; i += 1) {
    const key = localStorage.key(i);
    if (!isChatKey(key) || gone.has(chatIdOfKey(key))) continue;
    const chat = loadChat(chatIdOfKey(key));
    if (chat) chats.push(chat);
  }
  return chats;
}

/** Whether `chat` holds something the stored copy lacks (a message, a newer version of one, a removal). */
export function isAhead(chat, stored) {
  if (!stored) return true;
  const theirs = new Map(stored.messages.map((m) => [m.id, m.rev ?? 0]));
  const removed = new Set(stored.removed ?? []);
  return (
    chat.messages.some((m) => !theirs.has(m.id) || (m.rev ?? 0) > theirs.get(m.id)) ||
    (chat.removed ?? []).some((id) => !removed.has(id)) ||
    (chat.metaRev ?? 0) > (stored.metaRev ?? 0)
  );
}

/** Fold the stored copy of a chat into `chat` in place; the message objects of `chat` are kept when newer. */
export function mergeChat(chat, stored) {
  if (!stored) return chat;
  const removed = new Set([...(chat.removed ?? []), ...(stored.removed ?? [])]);
  const byId = new Map();
  for (const m of stored.messages) byId.set(m.id, m);
  for (const m of chat.messages) {
    const other = byId.get(m.id);
    if (!other || (m.rev ?? 0) >= (other.rev ?? 0)) byId.set(m.id, m);
  }
  chat.messages = [...byId.values()]
    .filter((m) => !removed.has(m.id))
    .sort((a, b) => a.at - b.at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  chat.removed = [...removed].slice(-1000);
  if ((stored.metaRev ?? 0) > (chat.metaRev ?? 0)) {
    for (const key of ["title", "model", "systemPrompt", "metaRev"]) chat[key] = stored[key];
  }
  chat.updated = Math.max(chat.updated ?? 0, stored.updated ?? 0);
  return chat;
}

/**
 * Save one chat, merged with the stored copy (another tab may have added to it); `chat` is updated in place.
 * When the browser's quota is full, the oldest other chats are removed until it fits: their ids are returned.
 */
export function saveChat(chat, others = []) {
  if (deletedIds().has(chat.id)) return [];
  mergeChat(chat, loadChat(chat.id));
  const dropped = [];
  const oldest = [...others].filter((c) => c.id !== chat.id).sort((a, b) => a.updated - b.updated);
  for (;;) {
    try {
      localStorage.setItem(CHAT_PREFIX + chat.id, JSON.stringify(chat));
      return dropped;
    } catch {
      const victim = oldest.shift();
      if (!victim) return dropped;
      localStorage.removeItem(CHAT_PREFIX + victim.id);
      dropped.push(victim.id);
    }
  }
}

/** Delete a chat here and in every tab (they would otherwise save it again). */
export function deleteChat(id) {
  const gone = [...deletedIds()].filter((x) => x !== id);
  gone.push(id);
  localStorage.setItem(DELETED, JSON.stringify(gone.slice(-MAX_DELETED)));
  localStorage.removeItem(CHAT_PREFIX + id);
}

/** Bring back a deleted chat (Undo). */
export function restoreChat(chat) {
  const gone = [...deletedIds()].filter((x) => x !== chat.id);
  localStorage.setItem(DELETED, JSON.stringify(gone));
  return saveChat(chat);
}

export function isDeleted(id) {
  return deletedIds().has(id);
}

export function loadCurrentId() {
  return read(CURRENT, null);
}

export function saveCurrentId(id) {
  localStorage.setItem(CURRENT, JSON.stringify(id));
}

export function newChat() {
  const now = Date.now();
  return { id: uid(), title: "", messages: [], removed: [], created: now, updated: now, metaRev: 0 };
}

let lastAt = 0;

/**
 * A time to order messages and their versions by (`at`, `rev`): strictly increasing within this tab, even within
 * one millisecond, so that the last change of a message always wins a merge.
 */
export function nextAt() {
  lastAt = Math.max(Date.now(), lastAt + 1);
  return lastAt;
}

export function newMessage(fields) {
  const at = nextAt();
  return { id: uid(), at, rev: at, ...fields };
}

export function titleFrom(text) {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}

/** The unsent text typed for a chat ("" for a new chat), kept across reloads. */
export function loadDraft(chatId) {
  const drafts = read(DRAFTS, {});
  return (drafts && typeof drafts === "object" && drafts[chatId ?? ""]) || "";
}

export function saveDraft(chatId, text) {
  const drafts = read(DRAFTS, {});
  const kept = drafts && typeof drafts === "object" ? drafts : {};
  delete kept[chatId ?? ""];
  if (text) kept[chatId ?? ""] = text;
  const entries = Object.entries(kept).slice(-MAX_DRAFTS);
  try {
    localStorage.setItem(DRAFTS, JSON.stringify(Object.fromEntries(entries)));
  } catch {
    // A full quota: the draft stays in the box, just not across a reload.
  }
}

/** A chat as Markdown, for export. */
export function chatMarkdown(chat) {
  const lines = [`# ${chat.title || "Chat"}`, ""];
  if (chat.systemPrompt) lines.push(`> System: ${chat.systemPrompt.replace(/\n/g, "\n> ")}`, "");
  for (const m of chat.messages) {
    lines.push(`## ${m.role === "user" ? "You" : m.model || "Assistant"}`, "", m.content || "", "");
  }
  return lines.join("\n");
}

/** Chats read from an exported JSON file: each gets a fresh id so importing twice never overwrites. */
export function chatsFromExport(data) {
  const list = Array.isArray(data) ? data : Array.isArray(data?.chats) ? data.chats : [data];
  return list.filter(valid).map((chat) => {
    const copy = normalize(structuredClone(chat));
    copy.id = uid();
    copy.messages = copy.messages
      .filter((m) => (m.role === "user" || m.role === "assistant") && typeof m.content === "string")
      .map((m) => ({ ...m, id: uid(), pending: undefined }));
    copy.removed = [];
    return copy;
  });
}
