// The words the chat page's script shows (chat.js), in one place so that
// they can be translated together. Error codes are worded by the server
// (ERROR_TEXT, sent in the page's config); the page's HTML words are in the
// template.

/** A stored reply's status, in words. */
export const STATUS_TEXT = {
  cancelled: "Stopped.",
  interrupted: "Interrupted: the server stopped before this reply was finished.",
  generating: "Still being written…",
};
/** Every other word of the chat page's script. */
export const WORDS = {
  notLoaded: "That conversation could not be loaded.",
  failed: "That did not work. Please try again.",
  notConnected: "Not connected to the server yet; your message is kept. Trying to reconnect…",
  tooLong: (max) => `Your message is longer than ${max} characters. Please shorten it.`,
  waiting: "Waiting…",
  writing: "Writing…",
  loading: "The model is loading; your reply will start when it is ready.",
  position: (position, waiting) => `Waiting in queue: position ${position} of ${waiting}`,
  startsIn: (seconds) => (seconds >= 60
    ? `Starts in about ${Math.round(seconds / 60)} min`
    : `Starts in about ${seconds} s`),
  cutLength: "Cut off at the length limit.",
  cutRepetition: "Cut off because the reply kept repeating itself.",
  regenerate: "Regenerate",
  regenerateLabel: "Write a new reply to this question",
  edit: "Edit",
  editLabel: "Edit this question and ask again",
  editing: "Editing your last question: Send asks again with the new text.",
  cancelEdit: "Cancel",
  reconnecting: "Connection lost. Reconnecting…",
};

/**
 * The status line of a waiting reply, from a `queued` frame (or `attached`):
 * that the model is loading (no position then), else the position and, when
 * `eta_s` is a number, about when it starts (seconds, minutes from 60 s).
 */
export function queueText({ position, waiting, model_state: modelState, eta_s: eta }) {
  if (modelState === "loading") return WORDS.loading;
  if (position == null) return WORDS.waiting;
  const where = WORDS.position(position, waiting);
  return typeof eta === "number" ? `${where}. ${WORDS.startsIn(eta)}` : where;
}

/** The words of the conversation list (conversations.js). */
export const LIST_WORDS = {
  untitled: "Untitled conversation",
  rename: "Rename",
  renameLabel: (title) => `Rename “${title}”`,
  newTitleLabel: (title) => `New title for “${title}”`,
  delete: "Delete",
  deleteLabel: (title) => `Delete “${title}”`,
  deleted: (title) => `Deleted “${title}”.`,
  undo: "Undo",
  undoLabel: (title) => `Undo deleting “${title}”`,
};

/** The words of the sidebar's search (search.js). */
export const SEARCH_WORDS = {
  noResults: "No conversations match.",
  results: (count) => (count === 1 ? "1 conversation found." : `${count} conversations found.`),
};
