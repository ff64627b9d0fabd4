// The chat page: sidebar, message list and composer, talking to /ws/chat/
// (protocol in docs/protocol.md) and to the /api/conversations/ JSON views.
//
// Model output and every stored text is inserted with textContent or text
// nodes, never as HTML: a reply may contain markup and must show as text.

const config = JSON.parse(document.getElementById("chat-config").textContent);
const csrfToken = document.querySelector("[name=csrfmiddlewaretoken]").value;
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
  attempts: 0,
  dropped: false,
  pending: null, // {content, el}: sent, not yet accepted by the server
  active: null, // {request, content, el, text, status}: the reply in progress
};

// HTTP ---------------------------------------------------------------------

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) window.location.reload(); // back to the login form
  if (!response.ok) {
    // A refusal (400) says why in {"error": "..."}; show that, not a status code.
    const { error } = await response.json().catch(() => ({}));
    throw Object.assign(new Error(`HTTP ${response.status}`), { userMessage: error });
  }
  return response.json();
}

async function loadConversations() {
  const { conversations } = await api("/api/conversations/");
  els.list.replaceChildren(...conversations.map(sidebarItem));
}

function sidebarItem(conversation) {
  const li = document.createElement("li");
  li.dataset.id = conversation.id;
  li.classList.toggle("current", conversation.id === state.conversation);
  const open = button("open", conversation.title, () => openConversation(conversation.id, true));
  open.title = conversation.title;
  const rename = button("tool", "Rename", async () => {
    const title = window.prompt("New title", conversation.title);
    if (title && title.trim()) {
      await api(`/api/conversations/${conversation.id}/rename/`, { title }).catch(showFailure);
      loadConversations();
    }
  });
  const remove = button("tool", "Delete", async () => {
    if (!window.confirm(`Delete “${conversation.title}”?`)) return;
    await api(`/api/conversations/${conversation.id}/delete/`, {}).catch(showFailure);
    if (conversation.id === state.conversation) newChat();
    loadConversations();
  });
  li.append(open, rename, remove);
  return li;
}

async function openConversation(id, push) {
  state.conversation = id;
  if (push) history.pushState({}, "", `/c/${id}/`);
  els.chat.classList.remove("sidebar-open");
  highlightCurrent();
  try {
    const { messages } = await api(`/api/conversations/${id}/`);
    if (state.conversation !== id) return; // another one was opened meanwhile
    els.messages.replaceChildren(...messages.map(storedMessage));
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
  for (const li of els.list.children) li.classList.toggle("current", Number(li.dataset.id) === state.conversation);
}

// Rendering ----------------------------------------------------------------

function button(className, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function messageElement(role, content) {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  const text = document.createTextNode(content);
  body.append(text);
  const status = document.createElement("div");
  status.className = "status";
  li.append(body, status);
  els.messages.append(li);
  return { el: li, text, status };
}

function storedMessage(message) {
  const { el, status } = messageElement(message.role, message.content);
  el.dataset.id = message.id;
  if (message.role === "user" && message.status === "error") {
    addFailure(el, ERROR_TEXT[message.error_code] || ERROR_TEXT.internal, message.content);
  } else if (message.status === "error") {
    addFailure(el, ERROR_TEXT[message.error_code] || ERROR_TEXT.internal, null);
  } else if (message.role === "assistant") {
    status.textContent = [STATUS_TEXT[message.status], stats(message.usage, message.timings)].filter(Boolean).join(" ");
  }
  return el;
}

function stats(usage, timings) {
  if (!usage || !timings || timings.ttft_ms == null) return "";
  const parts = [`First token in ${(timings.ttft_ms / 1000).toFixed(2)} s`];
  const seconds = (timings.total_ms - timings.ttft_ms) / 1000;
  if (usage.completion_tokens > 1 && seconds > 0) {
    parts.push(`${((usage.completion_tokens - 1) / seconds).toFixed(1)} tokens/s`);
  }
  return parts.join(" · ");
}

function addFailure(el, text, retryContent) {
  const failure = document.createElement("div");
  failure.className = "failure";
  failure.setAttribute("role", "alert");
  failure.append(document.createTextNode(text));
  if (retryContent) {
    const retry = button("retry", "Retry", () => {
      if (sendMessage(retryContent)) failure.remove();
    });
    failure.append(retry);
  }
  el.append(failure);
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
  const socket = state.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    showNotice("Not connected to the server yet; your message is kept. Trying to reconnect…");
    return false;
  }
  if (state.pending || state.active) {
    showNotice(ERROR_TEXT.busy);
    return false;
  }
  showNotice("");
  state.pending = { content, el: messageElement("user", content).el };
  socket.send(JSON.stringify({ type: "send", conversation: state.conversation, content }));
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
    const reply = messageElement("assistant", "");
    reply.status.textContent = "Waiting…";
    state.active = { request: frame.request, content, ...reply };
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
    if (!active) return;
    active.text.appendData(frame.text);
    scrollToEnd(false);
  },
  done(frame) {
    const active = current(frame);
    if (!active) return;
    const note = frame.finish_reason === "cancelled" ? STATUS_TEXT.cancelled
      : frame.finish_reason === "length" ? "Cut off at the length limit." : "";
    if (frame.message === null) active.el.remove(); // stopped before it began
    active.status.textContent = [note, stats(frame.usage, frame.timings)].filter(Boolean).join(" ");
    finishActive();
  },
  error(frame) {
    const active = current(frame);
    if (active) {
      if (!active.text.data) active.status.textContent = "";
      addFailure(active.el, frame.message, active.content);
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
  state.active = null;
  setBusy(false);
  loadConversations().catch(() => {});
}

// Connection ---------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}${config.socketPath}`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.attempts = 0;
    els.connection.textContent = "";
    document.body.dataset.connected = "true";
    if (state.dropped) resync();
  });
  socket.addEventListener("message", (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    const handler = handlers[frame.type];
    if (handler) handler(frame);
  });
  socket.addEventListener("close", (event) => {
    document.body.dataset.connected = "false";
    if (event.code === 4401) { window.location.reload(); return; } // logged out
    state.dropped = true;
    restorePending();
    if (state.active) {
      state.active.status.textContent = "Connection lost; the reply was stopped.";
      state.active = null;
    }
    setBusy(false);
    // Exponential backoff with jitter, so that a restarted server is not
    // hit by every tab at the same instant.
    const delay = Math.min(30000, 500 * 2 ** state.attempts) * (0.5 + Math.random() / 2);
    state.attempts += 1;
    els.connection.textContent = "Connection lost. Reconnecting…";
    setTimeout(connect, delay);
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
els.stop.addEventListener("click", () => {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify({ type: "cancel" }));
});
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
