// The list of chats in the sidebar: title, date, rename and delete buttons, filtered by the search box.

const DAY = 86_400_000;
/** A short date: the time today, the weekday this week, else day and month (and year). */
export function chatDate(time) {
  const date = new Date(time);
  const now = new Date();
  if (date.toDateString() === now.toDateString()) {
    return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }
  if (now - date < 6 * DAY) return date.toLocaleDateString(undefined, { weekday: "short" });
  const sameYear = date.getFullYear() === now.getFullYear();
  return date.toLocaleDateString(undefined, sameYear ? { day: "numeric", month: "short" } : { dateStyle: "medium" });
}

/** Whether a chat's title or any of its messages holds the query (any case). */
export function matches(chat, query) {
  if (!query) return true;
  const q = query.toLowerCase();
  return (
    (chat.title || "").toLowerCase().includes(q) || chat.messages.some((m) => m.content?.toLowerCase().includes(q))
  );
}

function chatButton(className, text, label, id) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.dataset.id = id;
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  return b;
}

/** The list items for `chats`, newest first, those matching `query` only. */
export function chatListItems(chats, { query, currentId, busy }) {
  const shown = [...chats].sort((a, b) => b.updated - a.updated).filter((c) => matches(c, query));
  const items = shown.map((chat) => {
    const title = chat.title || "New chat";
    const item = document.createElement("li");
    item.className = "chat-entry";
    const open = chatButton("chat-open", "", "", chat.id);
    const name = document.createElement("span");
    name.className = "chat-title";
    name.textContent = title;
    const when = document.createElement("time");
    when.className = "chat-date";
    when.dateTime = new Date(chat.updated).toISOString();
    when.textContent = chatDate(chat.updated);
    open.append(name, when);
    open.title = title;
    if (busy(chat.id)) open.classList.add("busy");
    if (chat.id === currentId) open.setAttribute("aria-current", "true");
    item.append(
      open,
      chatButton("chat-rename", "✎", `Rename chat “${title}”`, chat.id),
      chatButton("chat-delete", "×", `Delete chat “${title}”`, chat.id),
    );
    return item;
  });
  if (!items.length) {
    const none = document.createElement("li");
    none.className = "chat-none";
    none.textContent = query ? "No chat matches." : "No chats yet.";
    items.push(none);
  }
  return items;
}
