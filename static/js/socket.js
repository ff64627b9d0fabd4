// A WebSocket to this site that reconnects by itself, shared by the chat page
// and the admin queue console. Frames are JSON both ways.

/**
 * Open a WebSocket to `path` on this site (ws: or wss: as the page) and keep
 * it open: after a drop it reconnects with exponential backoff and jitter
 * (from `firstDelayMs`, doubling up to `maxDelayMs`), so that a restarted
 * server is not hit by every tab at the same instant. A close with a code in
 * `reloadCodes` (logged out, not allowed) reloads the page instead, which
 * shows the login form.
 *
 * Handlers: `onOpen()` after each (re)connection, `onFrame(frame)` for each
 * JSON frame (others are ignored), `onDrop(event)` after each close that
 * will be retried, before the retry is scheduled.
 *
 * Returns {send(frame): true if sent, false when not connected;
 * isOpen(): boolean}.
 */
export function connectSocket(path, {
  onOpen = () => {}, onFrame = () => {}, onDrop = () => {},
  reloadCodes = [4401], firstDelayMs = 500, maxDelayMs = 30000,
} = {}) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket = null;
  let attempts = 0;

  function open() {
    socket = new WebSocket(`${scheme}://${location.host}${path}`);
    socket.addEventListener("open", () => {
      attempts = 0;
      onOpen();
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      if (reloadCodes.includes(event.code)) {
        window.location.reload();
        return;
      }
      onDrop(event);
      const delay = Math.min(maxDelayMs, firstDelayMs * 2 ** attempts) * (0.5 + Math.random() / 2);
      attempts += 1;
      setTimeout(open, delay);
    });
  }

  open();
  return {
    send(frame) {
      if (!socket || socket.readyState !== WebSocket.OPEN) return false;
      socket.send(JSON.stringify(frame));
      return true;
    },
    isOpen: () => socket !== null && socket.readyState === WebSocket.OPEN,
  };
}
