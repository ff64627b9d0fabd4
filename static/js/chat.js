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
import {
  addFailure, flushBody, messageView, setBodySoon, setLive, stats, storedMessage,
} from "./messages.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const $ = (id) => document.getElementById(id);
const els = {
  chat: $("chat"), list: $("conversations"), newChat: $("new-chat"), messages: $("messages"),
  form: $("composer"), input: $("input"), send: $("send"), stop: $("stop"),
  notice: $("notice"), connection: $("connection"), toggle: $("sidebar-toggle"), count: $("count"),
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
// for stored failures; live error frames carry their own message.
const ERROR_TEXT = config.errorText;
const STATUS_TEXT = {
  cancelled: "Stopped.",
  interrupted: "Interrupted: the server stopped before this reply was finished.",
  generating: "Still being written…",
};

const state = {
  conversation: config.conversation,
  socket: null,
  dropped: false,
  pending: null, // {content, el}: sent, not yet accepted by the server
  active: null, // {request, content, ...view}: the reply in progress
};

// Conversations ------------------------------------------------------------

async function loadConversations() {
  const { conversations } = await api("/api/conversations/");
  renderConversations(els.list, conversations, state.conversation, {
    open: (id) => openConversation(id, true),
    changed: () => loadConversations().catch(() => {}),
    deleted: (id) => { if (id === state.conversation) newChat(); },
    failed: showFailure,
  });
}

async function openConversation(id, push) {
  state.conversation = id;
  if (push) history.pushState({}, "", `/c/${id}/`);
  els.chat.classList.remove("sidebar-open");
  highlightCurrent();
  try {
    const { messages } = await api(`/api/conversations/${id}/`);
    if (state.conversation !== id) return; // another one was opened meanwhile
    const words = { statusText: STATUS_TEXT, errorText: ERROR_TEXT, retry: sendMessage };
    els.messages.replaceChildren(...messages.map((message) => storedMessage(message, words)));
    scrollToEnd(true);
  } catch (error) {
    showNotice("That conversation could not be loaded.");
  }
}

function newChat() {
  state.conversation = null;
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
  showNotice(error?.userMessage || "That did not work. Please try again.");
}

function setBusy(busy) {
  els.send.hidden = busy;
  els.stop.hidden = !busy;
}

// Sending ------------------------------------------------------------------

function sendMessage(content) {
  if (!state.socket.isOpen()) {
    showNotice("Not connected to the server yet; your message is kept. Trying to reconnect…");
    return false;
  }
  if (state.pending || state.active) {
    showNotice(ERROR_TEXT.busy);
    return false;
  }
  showNotice("");
  state.pending = { content, el: addMessage("user", content).el };
  state.socket.send({ type: "send", conversation: state.conversation, content });
  setBusy(true);
  scrollToEnd(true);
  return true;
}

function submitInput() {
  const content = els.input.value;
  if (blank(content)) return;
  // Text over the limit stays in the box, whole: only the person cuts it.
  if (codePoints(content) > config.maxChars) {
    showNotice(`Your message is longer than ${config.maxChars} characters. Please shorten it.`);
    els.notice.dataset.overLimit = "1";
    return;
  }
  if (sendMessage(content)) {
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
  state.pending.el.remove();
  if (blank(els.input.value)) els.input.value = state.pending.content;
  state.pending = null;
  updateCount();
}

// Server frames ------------------------------------------------------------

const handlers = {
  accepted(frame) {
    const { content, el } = state.pending || {};
    state.pending = null;
    if (el) el.dataset.id = frame.user_message;
    const isNew = state.conversation !== frame.conversation;
    state.conversation = frame.conversation;
    if (location.pathname !== `/c/${frame.conversation}/`) history.pushState({}, "", `/c/${frame.conversation}/`);
    const reply = addMessage("assistant", "");
    setLive(reply, true);
    reply.status.textContent = "Waiting…";
    state.active = Object.assign(reply, { request: frame.request, content });
    if (isNew) loadConversations().then(highlightCurrent);
  },
  queued(frame) {
    const active = current(frame);
    if (active) active.status.textContent = `Waiting in queue: position ${frame.position} of ${frame.waiting}`;
  },
  started(frame) {
    const active = current(frame);
    if (!active) return;
    active.el.dataset.id = frame.message;
    active.status.textContent = "Writing…";
  },
  token(frame) {
    const active = current(frame);
    if (active) setBodySoon(active, active.source + frame.text, () => scrollToEnd(false));
  },
  done(frame) {
    const active = current(frame);
    if (!active) return;
    flushBody(active);
    const note = frame.finish_reason === "cancelled" ? STATUS_TEXT.cancelled
      : frame.finish_reason === "length" ? "Cut off at the length limit." : "";
    if (frame.message === null) active.el.remove(); // stopped before it began
    active.status.textContent = [note, stats(frame.usage, frame.timings)].filter(Boolean).join(" ");
    finishActive();
  },
  error(frame) {
    const active = current(frame);
    if (active) {
      flushBody(active);
      if (!active.source) active.status.textContent = "";
      addFailure(active.el, frame.message, active.content ? () => sendMessage(active.content) : null);
      finishActive();
      return;
    }
    if (frame.request === null && state.pending) {
      restorePending();
      setBusy(false);
    }
    showNotice(frame.message);
  },
};

function current(frame) {
  return state.active && state.active.request === frame.request ? state.active : null;
}

function finishActive() {
  setLive(state.active, false);
  state.active = null;
  setBusy(false);
  loadConversations().catch(() => {});
}

// Connection ---------------------------------------------------------------

function connect() {
  state.socket = connectSocket(config.socketPath, {
    onOpen() {
      els.connection.textContent = "";
      document.body.dataset.connected = "true";
      if (state.dropped) resync();
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
        state.active.status.textContent = "Connection lost; the reply was stopped.";
        setLive(state.active, false);
        state.active = null;
      }
      setBusy(false);
      els.connection.textContent = "Connection lost. Reconnecting…";
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
  else { state.conversation = null; els.messages.replaceChildren(); highlightCurrent(); }
});

loadConversations().catch(showFailure);
if (state.conversation) openConversation(state.conversation, false);
connect();
