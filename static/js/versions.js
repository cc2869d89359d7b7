// Versions of a message (an edit, a regenerated answer): each keeps the conversation that followed it, so the
// user can flip between branches. A message with versions holds them all and shows `versions[version]`.

import * as store from "./store.js";

export const VERSION_FIELDS = ["content", "model", "stats", "finishReason", "error", "stopped", "reasoning"];

/** A copy of a message's shown version, with the messages that followed it. */
export function snapshot(message, tail) {
  const copy = {};
  for (const key of VERSION_FIELDS) if (message[key] !== undefined) copy[key] = structuredClone(message[key]);
  copy.after = structuredClone(tail.filter((m) => !m.pending));
  return copy;
}

/** Take the messages after `index` off the chat (remembered as removed, so no other tab brings them back). */
export function cutAfter(chat, index) {
  const tail = chat.messages.slice(index + 1);
  chat.removed.push(...tail.map((m) => m.id));
  chat.messages = chat.messages.slice(0, index + 1);
  return tail;
}

function setFields(message, fields) {
  for (const key of VERSION_FIELDS) delete message[key];
  Object.assign(message, fields);
  message.rev = store.nextAt();
}

/** Give a message a new version; the current one, with the conversation after it, stays as a branch. */
export function newVersion(chat, message, fields, keepOld = true) {
  const tail = cutAfter(chat, chat.messages.indexOf(message));
  message.versions ??= [];
  message.version ??= 0;
  if (keepOld) message.versions[message.version] = snapshot(message, tail);
  else message.versions.splice(message.version, 1);
  setFields(message, fields);
  message.versions.push(snapshot(message, []));
  message.version = message.versions.length - 1;
}

/** Show version `k` of a message in place, with the conversation that followed it; false when there is none. */
export function showVersion(chat, message, k) {
  if (!message.versions?.[k] || k === message.version) return false;
  const tail = cutAfter(chat, chat.messages.indexOf(message));
  message.versions[message.version] = snapshot(message, tail);
  const { after, ...fields } = structuredClone(message.versions[k]);
  setFields(message, fields);
  message.version = k;
  // Fresh ids: the ones taken off are remembered as removed.
  const rev = store.nextAt();
  chat.messages.push(...after.map((m) => ({ ...m, id: store.uid(), at: store.nextAt(), rev })));
  chat.updated = Date.now();
  return true;
}
