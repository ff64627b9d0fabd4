// The chat page: sidebar, message list and composer, talking to /ws/chat/
// (protocol in docs/protocol.md) and to the /api/conversations/ JSON views.
// This module holds the page's state and wiring; socket.js the connection,
// messages.js (with markdown.js) each message's DOM, conversations.js the
// sidebar and the JSON views.
//
// What people type is shown as text; the model's replies as Markdown that
// markdown.js sanitises. Nothing else ever goes in as HTML.

import { connectSocket } from "./socket.js";
import { api, markCurrent, renderConversations } from "./conversations.js";
import { temperatureControl } from "./sampling.js";
import { searchBox } from "./search.js";
import { LANGUAGE, STATUS_TEXT, WORDS, queueText } from "./words.js";
import {
  addFailure, button, flushBody, messageView, setBody, setBodySoon, setLive, stats, storedMessage, viewOf,
} from "./messages.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const $ = (id) => document.getElementById(id);
const els = {
  chat: $("chat"), list: $("conversations"), newChat: $("new-chat"), messages: $("messages"),
  form: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  notice: $("notice"), connection: $("connection"), toggle: $("sidebar-toggle"), count: $("count"),
  undoBar: $("undo-bar"),
};

// A message's length as the server counts it (generation/text.py): Unicode
// code points, so an emoji is one character, not two UTF-16 units as
// `String.length` would have it.
const codePoints = (text) => [...text].length;
// Blank as the server judges it (Python's str.isspace, generation/events.py):
// JavaScript's trim() also drops U+FEFF and keeps U+001C-U+001F, so the page
// would send what the server calls empty, or drop what it would store.
const blank = (text) => /^[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/.test(text);

// The server's words for each error code (generation.runtime.types.ERROR_TEXT),
// in the page's language. Frames carry a code and an English sentence, which
// may be more precise than the code's words (what is wrong with the text): an
// English page shows that sentence, any other words the frame by its code, as
// every page does a stored failure. A refusal of the page's own frame (a
// message too long, empty) says its reason in the reader's language, named
// by `lang`: that sentence is shown as it is.
const ERROR_TEXT = config.errorText;
const errorWords = (frame) =>
  ((LANGUAGE === "en" || frame.lang === LANGUAGE) && frame.message) || ERROR_TEXT[frame.code] || frame.message;
const state = {
  conversation: config.conversation,
  socket: null,
  dropped: false,
  pending: null, // {content, el, kind, question}: sent, not yet accepted by the server
  active: null, // {request, content, question, conversation, ...view}: the reply in progress
  loaded: null, // the conversation whose stored messages the page shows
  editing: null, // {message, draft}: the question being edited, and the box's text before
};

// Conversations ------------------------------------------------------------

async function loadConversations() {
  const { conversations } = await api("/api/conversations/");
  renderConversations(els.list, conversations, state.conversation, {
    open: (id) => openConversation(id, true),
    changed: () => loadConversations().catch(() => {}),
    deleted: (id) => { if (id === state.conversation) newChat(); },
    restored: (id) => { if (state.conversation === null && !els.messages.children.length) openConversation(id, true); },
    failed: showFailure,
    undoBar: els.undoBar,
  });
}

async function openConversation(id, push) {
  if (state.conversation !== id) endEditing();
  state.conversation = id;
  state.loaded = null;
  if (push) history.pushState({}, "", `/c/${id}/`);
  els.chat.classList.remove("sidebar-open");
  highlightCurrent();
  try {
    const { conversation, messages } = await api(`/api/conversations/${id}/`);
    if (state.conversation !== id) return; // another one was opened meanwhile
    temperature.show(id, conversation.temperature);
    const words = {
      statusText: STATUS_TEXT, errorText: ERROR_TEXT, retry: sendMessage,
      finishText: { length: WORDS.cutLength, repetition: WORDS.cutRepetition },
    };
    els.messages.replaceChildren(...messages.map((message) => storedMessage(message, words)));
    for (const message of messages) {
      // Staff's Stop reads as a failure with Retry (a new reply to the question).
      if (message.error_code !== "cancelled_by_staff" || message.status === "error") continue;
      const el = els.messages.querySelector(`[data-id="${message.id}"]`);
      if (el) addFailure(el, ERROR_TEXT.cancelled_by_staff, () => regenerate(message.id));
    }
    state.loaded = id;
    refreshTurnActions();
    scrollToEnd(true);
    // A reply of this conversation may still be live (a reload mid-reply):
    // the server answers `attached` and the rest streams in.
    // Not while this socket shows another conversation's reply (the server
    // would answer busy); that one ends first.
    if (!state.active || state.active.conversation === id) state.socket?.send({ type: "open", conversation: id });
  } catch (error) {
    showNotice(WORDS.notLoaded);
  }
}

function newChat() {
  endEditing();
  temperature.show(null, null);
  state.conversation = null;
  state.loaded = null;
  history.pushState({}, "", "/");
  els.messages.replaceChildren();
  els.chat.classList.remove("sidebar-open");
  highlightCurrent();
  els.input.focus();
}

function highlightCurrent() {
  markCurrent(els.list, state.conversation);
}

// Page furniture -----------------------------------------------------------

function addMessage(role, content) {
  const view = messageView(role, content);
  els.messages.append(view.el);
  return view;
}

function scrollToEnd(force) {
  const m = els.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 120) m.scrollTop = m.scrollHeight;
}

function showNotice(text) {
  delete els.notice.dataset.overLimit;
  els.notice.textContent = text;
  els.notice.hidden = !text;
}

function showFailure(error) {
  showNotice(error?.userMessage || WORDS.failed);
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
}

// Sending ------------------------------------------------------------------

// True when a frame may be sent now; otherwise says why, in words.
function canSend() {
  if (!state.socket.isOpen()) {
    showNotice(WORDS.notConnected);
    return false;
  }
  if (state.pending || state.active) {
    showNotice(ERROR_TEXT.busy);
    return false;
  }
  showNotice("");
  return true;
}

function sendMessage(content) {
  if (!canSend()) return false;
  state.pending = { content, el: addMessage("user", content).el, kind: "send" };
  state.socket.send({ type: "send", conversation: state.conversation, content });
  setBusy(true);
  scrollToEnd(true);
  return true;
}

// Ask again: a new reply to the last question. `message` is the last reply,
// or the last question when it has none (docs/protocol.md, `regenerate`).
function regenerate(message) {
  if (!canSend()) return false;
  const question = lastOf("user")?.dataset.id;
  state.pending = { content: null, el: null, kind: "regenerate", question: Number(question) };
  state.socket.send({ type: "regenerate", conversation: state.conversation, message });
  setBusy(true);
  return true;
}

function sendEdit(content) {
  if (!canSend()) return false;
  const { message } = state.editing;
  state.pending = { content, el: null, kind: "edit", question: message };
  state.socket.send({ type: "edit", conversation: state.conversation, message, content });
  setBusy(true);
  return true;
}

// Regenerate and Edit ----------------------------------------------------

function lastOf(role) {
  const all = els.messages.querySelectorAll(`.message.${role}[data-id]`);
  return all[all.length - 1] || null;
}

// Regenerate goes on the last reply and Edit on the last question, while no
// reply is being written; every other message loses them.
function refreshTurnActions() {
  for (const b of els.messages.querySelectorAll("button.turn-action")) b.remove();
  if (state.active || state.pending || state.loaded !== state.conversation) return;
  const question = lastOf("user");
  if (!question) return;
  const reply = lastOf("assistant");
  const target = reply && reply.compareDocumentPosition(question) & Node.DOCUMENT_POSITION_PRECEDING
    ? reply : null;
  const regen = button("copy turn-action regenerate", WORDS.regenerate,
    () => regenerate(Number((target || question).dataset.id)));
  regen.setAttribute("aria-label", WORDS.regenerateLabel);
  (target || question).append(regen);
  const edit = button("copy turn-action edit", WORDS.edit, () => startEditing(question));
  edit.setAttribute("aria-label", WORDS.editLabel);
  question.append(edit);
}

// The question goes back into the box; what the box held comes back on Cancel.
function startEditing(question) {
  const view = viewOf(question);
  if (!view) return;
  if (!state.editing) state.editing = { draft: els.input.value };
  state.editing.message = Number(question.dataset.id);
  els.input.value = view.source;
  updateCount();
  showEditing();
  els.input.focus();
}

function showEditing() {
  let bar = document.getElementById("editing");
  if (!state.editing) { bar?.remove(); return; }
  if (bar) return;
  bar = document.createElement("p");
  bar.id = "editing";
  bar.className = "notice editing";
  bar.append(document.createTextNode(WORDS.editing), button("copy", WORDS.cancelEdit, () => {
    const { draft } = state.editing || {};
    endEditing();
    els.input.value = draft || "";
    updateCount();
  }));
  els.form.before(bar);
}

function endEditing() {
  state.editing = null;
  showEditing();
}

// The messages an accepted regenerate or edit replaces leave the page: the
// old reply (regenerate), or the old question and its reply (edit).
function removeSuperseded(pending) {
  const question = els.messages.querySelector(`.message.user[data-id="${pending.question}"]`);
  if (!question) return;
  while (question.nextElementSibling) question.nextElementSibling.remove();
  if (pending.kind === "edit") question.remove();
}

function submitInput() {
  const content = els.input.value;
  if (blank(content)) return;
  // Text over the limit stays in the box, whole: only the person cuts it.
  if (codePoints(content) > config.maxChars) {
    showNotice(WORDS.tooLong(config.maxChars));
    els.notice.dataset.overLimit = "1";
    return;
  }
  if (state.editing ? sendEdit(content) : sendMessage(content)) {
    els.input.value = "";
    updateCount();
  }
}

// The counter appears near the limit and warns past it.
function updateCount() {
  const count = codePoints(els.input.value);
  els.count.hidden = count < config.maxChars * 0.9;
  els.count.textContent = `${count} / ${config.maxChars}`;
  els.count.classList.toggle("over", count > config.maxChars);
  // A notice that the text is too long goes once it is short enough.
  if (count <= config.maxChars && els.notice.dataset.overLimit) showNotice("");
}

// A message the server never accepted goes back into the input box, so that
// what the person typed is never lost.
function restorePending() {
  if (!state.pending) return;
  state.pending.el?.remove();
  if (state.pending.content !== null && blank(els.input.value)) els.input.value = state.pending.content;
  state.pending = null;
  updateCount();
}

// Server frames ------------------------------------------------------------

const handlers = {
  accepted(frame) {
    const pending = state.pending || {};
    let { content, el } = pending;
    state.pending = null;
    if (pending.kind === "regenerate" || pending.kind === "edit") {
      removeSuperseded(pending);
      if (pending.kind === "edit") {
        // What the box held before Edit comes back once the edit is stored.
        const draft = state.editing?.draft;
        endEditing();
        if (draft && blank(els.input.value)) { els.input.value = draft; updateCount(); }
        el = addMessage("user", content).el;
      } else {
        content = viewOf(els.messages.querySelector(`[data-id="${frame.user_message}"]`))?.source ?? null;
      }
    }
    if (el) el.dataset.id = frame.user_message;
    const isNew = state.conversation !== frame.conversation;
    state.conversation = frame.conversation;
    if (location.pathname !== `/c/${frame.conversation}/`) history.pushState({}, "", `/c/${frame.conversation}/`);
    const reply = addMessage("assistant", "");
    setLive(reply, true);
    reply.status.textContent = WORDS.waiting;
    state.active = Object.assign(reply, {
      request: frame.request, content, question: frame.user_message, conversation: frame.conversation,
    });
    if (isNew) {
      state.loaded = frame.conversation;
      temperature.show(frame.conversation, null);
      loadConversations().then(highlightCurrent);
    }
    refreshTurnActions();
    scrollToEnd(true);
  },
  // Answer to `open`: a reply of this conversation is still live (a reload
  // or a reconnect mid-reply). Show its text so far, or its place in the queue.
  attached(frame) {
    if (frame.conversation !== state.conversation || state.loaded !== frame.conversation) return;
    if (state.pending) return; // this page's own request comes with `accepted`
    let el = frame.message !== null && els.messages.querySelector(`.message.assistant[data-id="${frame.message}"]`);
    const question = els.messages.querySelector(`.message.user[data-id="${frame.user_message}"]`);
    if (!el && question?.nextElementSibling?.classList.contains("assistant")) el = question.nextElementSibling;
    let reply = el && viewOf(el);
    if (!reply) {
      reply = messageView("assistant", "");
      if (question) question.after(reply.el); else els.messages.append(reply.el);
    }
    for (const failure of reply.el.querySelectorAll(".failure")) failure.remove();
    if (frame.message !== null) reply.el.dataset.id = frame.message;
    setBody(reply, frame.text);
    setLive(reply, true);
    reply.status.textContent = frame.message === null ? queueText(frame) : WORDS.writing;
    const content = question ? viewOf(question)?.source ?? null : null;
    state.active = Object.assign(reply, {
      request: frame.request, content, question: frame.user_message, conversation: frame.conversation,
    });
    setBusy(true);
    refreshTurnActions();
    scrollToEnd(false);
  },
  idle() {},
  queued(frame) {
    const active = current(frame);
    if (!active) return;
    // "Moved back" stays shown until the place gets better again.
    const before = active.position;
    active.movedBack = Boolean(frame.moved_back)
      || (Boolean(active.movedBack) && before != null && frame.position >= before);
    active.position = frame.position;
    active.status.textContent = queueText(frame, { movedBack: active.movedBack });
  },
  started(frame) {
    const active = current(frame);
    if (!active) return;
    active.el.dataset.id = frame.message;
    active.status.textContent = WORDS.writing;
  },
  token(frame) {
    const active = current(frame);
    if (active) setBodySoon(active, active.source + frame.text, () => scrollToEnd(false));
  },
  done(frame) {
    const active = current(frame);
    if (!active) return;
    flushBody(active);
    const byStaff = frame.code === "cancelled_by_staff";
    // Staff's Stop reads "Stopped." too, as after a reload, with their words below.
    const note = frame.finish_reason === "cancelled" ? STATUS_TEXT.cancelled
      : frame.finish_reason === "length" ? WORDS.cutLength
        : frame.finish_reason === "repetition" ? WORDS.cutRepetition : "";
    if (frame.message === null) active.el.remove(); // stopped before it began
    active.status.textContent = [note, stats(frame.usage, frame.timings)].filter(Boolean).join(" ");
    if (byStaff) {
      const on = frame.message === null
        ? els.messages.querySelector(`.message.user[data-id="${active.question}"]`) : active.el;
      const target = frame.message ?? active.question;
      if (on) addFailure(on, ERROR_TEXT.cancelled_by_staff, () => regenerate(target));
    }
    finishActive();
  },
  error(frame) {
    const active = current(frame);
    if (active) {
      flushBody(active);
      if (!active.source) active.status.textContent = "";
      addFailure(active.el, errorWords(frame), active.content ? () => sendMessage(active.content) : null);
      finishActive();
      return;
    }
    if (frame.request === null && state.pending) {
      // A refused edit keeps its text in the box; a stale one becomes a plain send.
      if (["not_last", "not_found"].includes(frame.code)) endEditing();
      restorePending();
      setBusy(false);
      refreshTurnActions();
    }
    showNotice(errorWords(frame));
  },
};

function current(frame) {
  return state.active && state.active.request === frame.request ? state.active : null;
}

function finishActive() {
  setLive(state.active, false);
  state.active = null;
  setBusy(false);
  refreshTurnActions();
  loadConversations().catch(() => {});
}

// Connection ---------------------------------------------------------------

function connect() {
  state.socket = connectSocket(config.socketPath, {
    onOpen() {
      els.connection.textContent = "";
      document.body.dataset.connected = "true";
      if (state.dropped) resync();
      else if (state.conversation && state.loaded === state.conversation) {
        state.socket.send({ type: "open", conversation: state.conversation });
      }
    },
    onFrame(frame) {
      const handler = handlers[frame.type];
      if (handler) handler(frame);
    },
    onDrop() {
      document.body.dataset.connected = "false";
      state.dropped = true;
      restorePending();
      if (state.active) {
        flushBody(state.active);
        // The server keeps the reply for a while: the reconnect re-attaches.
        state.active.status.textContent = WORDS.reconnecting;
        setLive(state.active, false);
        state.active = null;
      }
      setBusy(false);
      els.connection.textContent = WORDS.reconnecting;
    },
  });
}

// After a drop the server has saved whatever it had: show the stored state.
function resync() {
  state.dropped = false;
  loadConversations().catch(() => {});
  if (state.conversation) openConversation(state.conversation, false);
}

// Wiring -------------------------------------------------------------------

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  submitInput();
});
els.input.addEventListener("input", updateCount);
els.input.addEventListener("keydown", (event) => {
  // Enter during IME composition confirms the composition; it must not send.
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  submitInput();
});
els.stop.addEventListener("click", () => state.socket.send({ type: "cancel" }));
els.newChat.addEventListener("click", newChat);
els.toggle.addEventListener("click", () => {
  const open = els.chat.classList.toggle("sidebar-open");
  els.toggle.setAttribute("aria-expanded", String(open));
});
window.addEventListener("popstate", () => {
  const match = location.pathname.match(/^\/c\/(\d+)\/$/);
  if (match) openConversation(Number(match[1]), false);
  else {
    state.conversation = null;
    els.messages.replaceChildren();
    temperature.show(null, null);
    highlightCurrent();
  }
});

const temperature = temperatureControl(
  $("temperature-control"), $("temperature"), () => state.conversation, showFailure,
);
searchBox($("search"), $("search-results"), els.list, $("search-status"), (id) => openConversation(id, true));
loadConversations().catch(showFailure);
if (state.conversation) openConversation(state.conversation, false);
connect();
