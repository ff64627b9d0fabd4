// The /api/conversations/ JSON views and the sidebar's list of conversations.
// Titles are the person's own text: set as text, never as HTML. Words come
// from the page's catalog (gettext, interpolate: the /jsi18n/ script).

import { button } from "./messages.js";

const csrfToken = () => document.querySelector("[name=csrfmiddlewaretoken]").value;

/**
 * GET `path` (or POST `body` as JSON with the CSRF token) and return the JSON
 * answer. A 401 reloads the page (back to the login form); any other failure
 * throws an Error whose `userMessage` is the server's {"error": ...} if any.
 */
export async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) window.location.reload();
  if (!response.ok) {
    // A refusal (400) says why in {"error": "..."}; show that, not a status code.
    const { error } = await response.json().catch(() => ({}));
    throw Object.assign(new Error(`HTTP ${response.status}`), { userMessage: error });
  }
  return response.json();
}

/**
 * Fill `list` (the sidebar's <ul>) with `conversations` ({id, title} each),
 * marking `current` (an id or null). `actions.open(id)` opens one,
 * `actions.changed()` reloads the list after a rename or delete,
 * `actions.deleted(id)` is told of a deletion, `actions.failed(error)` of a
 * failure.
 */
export function renderConversations(list, conversations, current, actions) {
  list.replaceChildren(...conversations.map((c) => conversationItem(c, actions)));
  markCurrent(list, current);
}

/** Highlight conversation `id` (or none, for null) in `list`. */
export function markCurrent(list, id) {
  for (const li of list.children) {
    const isCurrent = Number(li.dataset.id) === id;
    li.classList.toggle("current", isCurrent);
    const open = li.querySelector(".open");
    if (isCurrent) open.setAttribute("aria-current", "page");
    else open.removeAttribute("aria-current");
  }
}

// A title nobody could see or hear (blank, or only invisible characters such
// as U+FEFF) would leave its button without a name.
const shownTitle = (title) => (title.replace(/[\p{White_Space}\p{Cf}]/gu, "") ? title : gettext("Untitled conversation"));

function conversationItem(conversation, actions) {
  const li = document.createElement("li");
  li.dataset.id = conversation.id;
  const title = shownTitle(conversation.title);
  const open = button("open", title, () => actions.open(conversation.id));
  open.title = title;
  const rename = button("tool", gettext("Rename"), async () => {
    const newTitle = window.prompt(gettext("New title"), conversation.title);
    if (newTitle && newTitle.trim()) {
      await api(`/api/conversations/${conversation.id}/rename/`, { title: newTitle }).catch(actions.failed);
      actions.changed();
    }
  });
  rename.setAttribute("aria-label", interpolate(gettext("Rename “%(title)s”"), { title }, true));
  const remove = button("tool", gettext("Delete"), async () => {
    if (!window.confirm(interpolate(gettext("Delete “%(title)s”?"), { title }, true))) return;
    await api(`/api/conversations/${conversation.id}/delete/`, {}).catch(actions.failed);
    actions.deleted(conversation.id);
    actions.changed();
  });
  remove.setAttribute("aria-label", interpolate(gettext("Delete “%(title)s”"), { title }, true));
  li.append(open, rename, remove);
  return li;
}
