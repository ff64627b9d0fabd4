// The words the chat page's script shows (chat.js), in one place so that
// they can be translated together. They come from the page's language
// catalog (the /jsi18n/ script that base.html loads before any module:
// gettext, ngettext, interpolate; locale/<language>/LC_MESSAGES/djangojs.po).
// Error codes are worded by the server (ERROR_TEXT, translated and sent in
// the page's config); the page's HTML words are in the template.

// Without the catalog (a page that does not load it) the words stay English.
const gettext = globalThis.gettext || ((text) => text);
const ngettext = globalThis.ngettext || ((one, many, n) => (n === 1 ? one : many));
const interpolate = globalThis.interpolate
  || ((format, values) => format.replace(/%\((\w+)\)s/g, (_, name) => String(values[name])));

/** The page's language (`<html lang>`), for numbers and dates. */
export const LANGUAGE = document.documentElement.lang || "en";

/** `number` written as the reader's locale writes it, with `digits` decimals. */
export function formatNumber(number, digits = 0) {
  return number.toLocaleString(LANGUAGE, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** A stored reply's status, in words. */
export const STATUS_TEXT = {
  cancelled: gettext("Stopped."),
  interrupted: gettext("Interrupted: the server stopped before this reply was finished."),
  generating: gettext("Still being written…"),
};
/** Every other word of the chat page's script. */
export const WORDS = {
  notLoaded: gettext("That conversation could not be loaded."),
  failed: gettext("That did not work. Please try again."),
  notConnected: gettext("Not connected to the server yet; your message is kept. Trying to reconnect…"),
  tooLong: (max) => interpolate(
    ngettext(
      "Your message is longer than %(max)s character. Please shorten it.",
      "Your message is longer than %(max)s characters. Please shorten it.",
      max,
    ),
    { max },
    true,
  ),
  waiting: gettext("Waiting…"),
  writing: gettext("Writing…"),
  loading: gettext("The model is loading; your reply will start when it is ready."),
  position: (position, waiting) => interpolate(
    gettext("Waiting in queue: position %(position)s of %(waiting)s"),
    { position: formatNumber(position), waiting: formatNumber(waiting) },
    true,
  ),
  movedBack: gettext("Moved back: priority requests arrived."),
  movedBackAnd: (where) => interpolate(gettext("Moved back: priority requests arrived. %(where)s"), { where }, true),
  // "Starts in about …" after the position, as one sentence of its own.
  positionAndStart: (where, starts) => interpolate(gettext("%(where)s. %(starts)s"), { where, starts }, true),
  startsIn: (seconds) => (seconds >= 60
    ? interpolate(gettext("Starts in about %(minutes)s min"), { minutes: formatNumber(Math.round(seconds / 60)) }, true)
    : interpolate(gettext("Starts in about %(seconds)s s"), { seconds: formatNumber(seconds) }, true)),
  cutLength: gettext("Cut off at the length limit."),
  cutRepetition: gettext("Cut off because the reply kept repeating itself."),
  regenerate: gettext("Regenerate"),
  regenerateLabel: gettext("Write a new reply to this question"),
  edit: gettext("Edit"),
  editLabel: gettext("Edit this question and ask again"),
  editing: gettext("Editing your last question: Send asks again with the new text."),
  cancelEdit: gettext("Cancel"),
  reconnecting: gettext("Connection lost. Reconnecting…"),
  // messages.js: Copy buttons, Retry, a finished reply's figures.
  copy: gettext("Copy"),
  copied: gettext("Copied"),
  copyReply: gettext("Copy reply"),
  copyCode: gettext("Copy code"),
  retry: gettext("Retry"),
  firstToken: (seconds) => interpolate(gettext("First token in %(seconds)s s"), { seconds: formatNumber(seconds, 2) }, true),
  tokensPerSecond: (rate) => interpolate(gettext("%(rate)s tokens/s"), { rate: formatNumber(rate, 1) }, true),
};

/**
 * The status line of a waiting reply, from a `queued` frame (or `attached`):
 * that the model is loading (no position then), else the position and, when
 * `eta_s` is a number, about when it starts (seconds, minutes from 60 s).
 * `movedBack`: say that requests of a better priority class went ahead
 * (the frame's `moved_back`, kept by the page until the place improves).
 */
export function queueText({ position, waiting, model_state: modelState, eta_s: eta }, { movedBack = false } = {}) {
  if (modelState === "loading") return WORDS.loading;
  if (position == null) return WORDS.waiting;
  let where = WORDS.position(position, waiting);
  if (movedBack) where = WORDS.movedBackAnd(where);
  return typeof eta === "number" ? WORDS.positionAndStart(where, WORDS.startsIn(eta)) : where;
}

/** The words of the conversation list (conversations.js). */
export const LIST_WORDS = {
  untitled: gettext("Untitled conversation"),
  rename: gettext("Rename"),
  renameLabel: (title) => interpolate(gettext("Rename “%(title)s”"), { title }, true),
  newTitleLabel: (title) => interpolate(gettext("New title for “%(title)s”"), { title }, true),
  delete: gettext("Delete"),
  deleteLabel: (title) => interpolate(gettext("Delete “%(title)s”"), { title }, true),
  deleted: (title) => interpolate(gettext("Deleted “%(title)s”."), { title }, true),
  undo: gettext("Undo"),
  undoLabel: (title) => interpolate(gettext("Undo deleting “%(title)s”"), { title }, true),
};

/** The words of the sidebar's search (search.js). */
export const SEARCH_WORDS = {
  noResults: gettext("No conversations match."),
  results: (count) => interpolate(
    ngettext("%(count)s conversation found.", "%(count)s conversations found.", count),
    { count: formatNumber(count) },
    true,
  ),
};
