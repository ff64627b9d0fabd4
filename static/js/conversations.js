// The /api/conversations/ JSON views and the sidebar's list of conversations:
// whole titles (they wrap), rename in place, delete with Undo.
// Titles are the person's own text: set as text, never as HTML. Words come
// from words.js, which takes them from the page's catalog (/jsi18n/).

import { button } from "./messages.js";
import { LIST_WORDS } from "./words.js";

const csrfToken = () => document.querySelector("[name=csrfmiddlewaretoken]").value;

// How long the Undo of a delete is offered; the server keeps the
// conversation restorable longer (the delete's answer says how long).
const UNDO_SHOWN_MS = 8000;

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
 * `actions.changed()` reloads the list after a rename, delete or undo,
 * `actions.deleted(id)` is told of a deletion and `actions.restored(id)` of
 * its undo, `actions.failed(error)` of a failure. `actions.undoBar` is the
 * element (a polite live region) where a delete offers its Undo.
 */
export function renderConversations(list, conversations, current, actions) {
  const render = () => {
    // The list is rebuilt whenever a reply ends; a keyboard user keeps their
    // place: the focus goes to the same button of the same conversation.
    const active = list.contains(document.activeElement) ? document.activeElement : null;
    const place = active && { id: active.closest("li")?.dataset.id, tool: active.classList.item(active.classList.length - 1) };
    list.replaceChildren(...conversations.map((c) => conversationItem(c, actions)));
    markCurrent(list, current);
    if (place) list.querySelector(`li[data-id="${place.id}"] .${place.tool}`)?.focus();
  };
  // Rebuilding now would throw away the title being typed: wait until the
  // rename ends (it runs the newest of the waiting renders).
  if (list.querySelector(".rename-input")) deferredRender.set(list, render);
  else render();
}

const deferredRender = new WeakMap(); // list -> the render a rename holds back

function runDeferredRender(list) {
  const render = list && deferredRender.get(list);
  if (!render) return;
  deferredRender.delete(list);
  render();
}

/** Highlight conversation `id` (or none, for null) in `list`. */
export function markCurrent(list, id) {
  for (const li of list.children) {
    const isCurrent = Number(li.dataset.id) === id;
    li.classList.toggle("current", isCurrent);
    const open = li.querySelector(".open");
    if (!open) continue; // being renamed
    if (isCurrent) open.setAttribute("aria-current", "page");
    else open.removeAttribute("aria-current");
  }
}

// A title nobody could see or hear (blank, or only invisible characters such
// as U+FEFF, or control characters) would leave its button without a name.
const shownTitle = (title) => (title.replace(/[\p{White_Space}\p{Cf}\p{Cc}]/gu, "") ? title : LIST_WORDS.untitled);

function conversationItem(conversation, actions) {
  const li = document.createElement("li");
  li.dataset.id = conversation.id;
  const title = shownTitle(conversation.title);
  const open = button("open", title, () => actions.open(conversation.id));
  open.title = title; // the whole title wraps; the tooltip repeats it
  const rename = button("tool rename", LIST_WORDS.rename, () => startRename(li, open, conversation, actions));
  rename.setAttribute("aria-label", LIST_WORDS.renameLabel(title));
  const remove = button("tool delete", LIST_WORDS.delete, () => deleteConversation(li, title, conversation, actions));
  remove.setAttribute("aria-label", LIST_WORDS.deleteLabel(title));
  const tools = document.createElement("span");
  tools.className = "tools";
  tools.append(rename, remove);
  li.append(open, tools);
  return li;
}

// The title becomes a text box: Enter or leaving it saves, Escape puts the
// title back. Focus returns to the conversation's button either way.
function startRename(li, open, conversation, actions) {
  const input = document.createElement("input");
  input.type = "text";
  input.className = "rename-input";
  input.value = conversation.title;
  input.setAttribute("aria-label", LIST_WORDS.newTitleLabel(shownTitle(conversation.title)));
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = input.value;
    const list = li.parentElement;
    input.replaceWith(open);
    open.focus();
    runDeferredRender(list);
    if (!save || !title.trim() || title === conversation.title) return;
    try {
      await api(`/api/conversations/${conversation.id}/rename/`, { title });
    } catch (error) {
      actions.failed(error);
    }
    actions.changed();
  };
  input.addEventListener("keydown", (event) => {
    if (event.isComposing || event.keyCode === 229) return; // Enter that confirms an IME composition
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") { event.preventDefault(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  open.replaceWith(input);
  input.focus();
  input.select();
}

// The conversation leaves the list at once and the server stops its reply;
// Undo brings it back for a few seconds.
async function deleteConversation(li, title, conversation, actions) {
  const hadFocus = li.contains(document.activeElement);
  li.remove();
  actions.deleted(conversation.id);
  try {
    await api(`/api/conversations/${conversation.id}/delete/`, {});
  } catch (error) {
    actions.failed(error);
    actions.changed();
    return;
  }
  offerUndo(actions.undoBar, title, hadFocus, async () => {
    try {
      await api(`/api/conversations/${conversation.id}/restore/`, {});
      actions.restored(conversation.id);
    } catch (error) {
      actions.failed(error);
    }
    actions.changed();
  });
}

let undoTimer = null;

// Show "Deleted “title”. Undo" in `bar` for UNDO_SHOWN_MS (a later delete
// replaces it). The Undo button takes the focus when the deleted item had it.
function offerUndo(bar, title, takeFocus, undo) {
  clearTimeout(undoTimer);
  const hide = () => {
    clearTimeout(undoTimer);
    const focused = bar.contains(document.activeElement);
    bar.replaceChildren();
    if (focused) document.getElementById("new-chat")?.focus();
  };
  const undoButton = button("link undo", LIST_WORDS.undo, () => { hide(); undo(); });
  undoButton.setAttribute("aria-label", LIST_WORDS.undoLabel(title));
  const words = document.createElement("span");
  words.textContent = LIST_WORDS.deleted(title);
  bar.replaceChildren(words, " ", undoButton);
  if (takeFocus) undoButton.focus();
  undoTimer = setTimeout(hide, UNDO_SHOWN_MS);
}
