// One message's DOM, built in one place: the message itself, its body (the
// person's text as text; the model's reply as sanitised Markdown), its status
// line, Copy buttons and failures. The chat page (chat.js) decides when.
//
// A message's parts, as used everywhere here, are a "view":
//   {el: <li>, body: <div>, status: <div>, role, source: the raw text}.

import { renderMarkdown } from "./markdown.js";
import { WORDS } from "./words.js";

const COPIED_MS = 1500;
const views = new WeakMap(); // <li> -> its view

/** A button of `className` showing `label`, calling `onClick` on click. */
export function button(className, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

/**
 * A new message of `role` ("user" or "assistant") holding `content`; not yet
 * in the document. A user's text is shown as typed (a text node); a reply
 * is rendered as Markdown and has a Copy button for its whole text.
 */
export function messageView(role, content = "") {
  const el = document.createElement("li");
  el.className = `message ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  const status = document.createElement("div");
  status.className = "status";
  el.append(body, status);
  const view = { el, body, status, role, source: "" };
  if (role === "assistant") {
    const copy = button("copy copy-reply", WORDS.copy, () => copyText(view.source, copy));
    copy.setAttribute("aria-label", WORDS.copyReply);
    copy.hidden = true;
    el.append(copy);
    view.copy = copy;
  }
  setBody(view, content);
  views.set(el, view);
  return view;
}

/**
 * The view of a message element made here (e.g. a stored reply found by its
 * `data-id`, to stream into or replace), or undefined for any other element.
 */
export function viewOf(el) {
  return views.get(el);
}

/**
 * Render `text` as the whole body of `view` now, replacing what it showed: a
 * reply as Markdown (with a Copy button on each code block), a user's
 * message as plain text. The one way a body changes; cancels a pending
 * `setBodySoon` of the same view.
 */
export function setBody(view, text) {
  view.source = text;
  scheduled.delete(view);
  if (view.role !== "assistant") {
    view.body.textContent = text;
    return;
  }
  const fragment = renderMarkdown(text);
  // markdown-it puts a newline after each block; between blocks it is no text.
  for (const node of [...fragment.childNodes]) {
    if (node.nodeType === Node.TEXT_NODE && !node.data.trim()) node.remove();
  }
  for (const pre of fragment.querySelectorAll("pre")) addCodeCopy(pre);
  view.body.replaceChildren(fragment);
  view.copy.hidden = !text;
}

// Streaming: tokens arrive faster than frames, and each render parses the
// whole reply, so a reply re-renders at most once per animation frame, and
// only the replies that changed (in practice the one being written). When a
// render takes long (a long reply on a slow machine), frames are skipped so
// that rendering takes at most about half the main thread: scrolling and
// typing stay smooth, and the reply updates a little less often.
const scheduled = new Map(); // view -> callback after rendering
let frame = 0;
let lastCost = 0; // ms the last flush took
let lastEnd = 0; // performance.now() when it ended

/**
 * Show `text` as `view`'s body by the next animation frame, then call
 * `afterRender` (e.g. to scroll). Calls within one frame render once, with
 * the latest text. `view.source` is `text` at once.
 */
export function setBodySoon(view, text, afterRender = null) {
  view.source = text;
  scheduled.set(view, afterRender);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  if (!scheduled.size) return;
  const start = performance.now();
  if (start - lastEnd < lastCost) {
    frame = requestAnimationFrame(flush);
    return;
  }
  const due = [...scheduled];
  scheduled.clear();
  for (const [view, afterRender] of due) {
    setBody(view, view.source);
    if (afterRender) afterRender();
  }
  lastEnd = performance.now();
  lastCost = lastEnd - start;
}

/** Render a pending `setBodySoon` of `view` now, e.g. when its reply ends. */
export function flushBody(view) {
  if (scheduled.has(view)) setBody(view, view.source);
}

/**
 * Mark `view` as the reply being streamed (`live` true) or finished. A
 * streaming reply is a polite live region, busy while it grows, so that a
 * screen reader reads it once, whole, rather than every frame's re-render;
 * its status line (queue position, "Writing…") is announced as it changes.
 */
export function setLive(view, live) {
  if (live) {
    view.body.setAttribute("aria-live", "polite");
    view.status.setAttribute("role", "status");
  }
  view.body.setAttribute("aria-busy", String(live));
}

// A code block gets a bar above it: the language it names, and Copy.
function addCodeCopy(pre) {
  const code = pre.querySelector("code");
  const block = document.createElement("div");
  block.className = "code-block";
  const bar = document.createElement("div");
  bar.className = "code-bar";
  const language = document.createElement("span");
  language.textContent = /(?:^|\s)language-(\S+)/.exec(code?.className || "")?.[1] || "";
  const copy = button("copy copy-code", WORDS.copy, () => copyText((code || pre).textContent, copy));
  copy.setAttribute("aria-label", WORDS.copyCode);
  bar.append(language, copy);
  pre.replaceWith(block);
  block.append(bar, pre);
}

async function copyText(text, shownOn) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No clipboard API outside a secure context (plain http, not localhost).
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  shownOn.textContent = WORDS.copied;
  setTimeout(() => { shownOn.textContent = WORDS.copy; }, COPIED_MS);
}

/**
 * The status line of a finished reply: "First token in 0.42 s · 12.3 tokens/s"
 * (in the page's language)
 * from the `usage` and `timings` of a done frame or a stored message; "" when
 * they are missing.
 */
export function stats(usage, timings) {
  if (!usage || !timings || timings.ttft_ms == null) return "";
  const parts = [WORDS.firstToken(timings.ttft_ms / 1000)];
  const seconds = (timings.total_ms - timings.ttft_ms) / 1000;
  if (usage.completion_tokens > 1 && seconds > 0) {
    parts.push(WORDS.tokensPerSecond((usage.completion_tokens - 1) / seconds));
  }
  return parts.join(" · ");
}

/**
 * Show a failure `text` under the message `el`, with a Retry button when
 * `onRetry` is given; `onRetry()` returns true when the retry was sent, and
 * the failure then goes.
 */
export function addFailure(el, text, onRetry = null) {
  const failure = document.createElement("div");
  failure.className = "failure";
  failure.setAttribute("role", "alert");
  failure.append(document.createTextNode(text));
  if (onRetry) {
    failure.append(button("retry", WORDS.retry, () => {
      if (onRetry()) failure.remove();
    }));
  }
  el.append(failure);
}

/**
 * The element of a stored `message` (from /api/conversations/<id>/), its
 * reply rendered as a streamed one is. `statusText` words a status code
 * (cancelled, interrupted, generating), `finishText` a complete reply's
 * finish_reason when it was cut (length, repetition), `errorText` an error
 * code; a failed question of the person's gets Retry through `retry(content)`.
 */
export function storedMessage(message, { statusText, finishText = {}, errorText, retry }) {
  const view = messageView(message.role, message.content);
  view.el.dataset.id = message.id;
  if (message.status === "error") {
    const text = errorText[message.error_code] || errorText.internal;
    addFailure(view.el, text, message.role === "user" ? () => retry(message.content) : null);
  } else if (message.role === "assistant") {
    const note = statusText[message.status] || finishText[message.finish_reason];
    view.status.textContent = [note, stats(message.usage, message.timings)]
      .filter(Boolean).join(" ");
  }
  return view.el;
}
