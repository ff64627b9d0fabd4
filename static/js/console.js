// The admin queue console: renders the live payload from /ws/queue/ and the
// last hour's snapshots. Every value from the server goes in as text, never
// as HTML, because user names and model errors are not ours to trust.

import { connectSocket } from "./socket.js";

(function () {
  const root = document.getElementById("console");
  if (!root) return;
  const HISTORY_REFRESH_MS = 5000;
  let socket = null; // connectSocket's {send, isOpen}
  let chart = null;

  // Formatting -------------------------------------------------------------

  function seconds(value) {
    if (value === null || value === undefined) return "—";
    if (value < 60) return value.toFixed(value < 10 ? 1 : 0) + " s";
    const minutes = Math.floor(value / 60);
    return minutes + " min " + Math.round(value % 60) + " s";
  }

  function ms(value) {
    if (value === null || value === undefined) return "—";
    return value < 1000 ? value + " ms" : (value / 1000).toFixed(2) + " s";
  }

  function pair(summary) {
    return summary && summary.count ? ms(summary.p50) + " / " + ms(summary.p95) : "—";
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fillBody(table, rows, emptyText, columns) {
    const body = table.querySelector("tbody");
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      cell(tr, emptyText).colSpan = columns;
      body.appendChild(tr);
    }
    rows.forEach((tr) => body.appendChild(tr));
  }

  function cancelButton(request) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button cancel";
    button.textContent = "Cancel";
    button.addEventListener("click", () => {
      button.disabled = true;
      if (socket) socket.send({ type: "cancel", request: request });
    });
    return button;
  }

  // Rendering --------------------------------------------------------------

  function version(number) {
    return number ? "version " + number : "environment defaults";
  }

  function renderWorkers(payload) {
    const rows = payload.workers.map((w) => {
      const tr = document.createElement("tr");
      tr.dataset.worker = w.worker;
      cell(tr, w.worker + (w.local ? " (this process)" : ""), "name");
      // What generates: "local, in-process" or "openai, http://gpu-1:8000/v1",
      // then the model's name once the backend has loaded or reached it.
      const backend = [w.model.backend, w.model.host].filter(Boolean).join(", ");
      cell(tr, backend + (w.model.name ? ": " + w.model.name : ""), "backend");
      const model = cell(tr, w.model.state + (w.model.error ? ": " + w.model.error : ""), "model");
      if (w.model.state === "failed") model.classList.add("model-failed");
      const limits = cell(tr, LIMITS[w.admission.fallback ? "fallback" : w.admission.scope] || w.admission.scope, "limits");
      if (w.admission.fallback) limits.classList.add("fallback");
      // `bound` is the cap, or the process's own bound when that is lower.
      cell(tr, w.running + " / " + w.bound, "num running");
      cell(tr, w.process_max_concurrency ? w.process_max_concurrency : "the cap", "num own-bound");
      cell(tr, w.waiting + " / " + w.max_queue, "num waiting");
      cell(tr, w.tokens_per_s.toFixed(1), "num tokens");
      cell(tr, pair(w.latency.ttft_ms), "num ttft");
      cell(tr, pair(w.latency.queue_wait_ms), "num queue-wait");
      const settings = cell(
        tr,
        version(w.settings_version) + (w.behind ? " (behind: " + version(payload.settings_version) + " is saved)" : ""),
        "settings-version"
      );
      if (w.behind) settings.classList.add("behind");
      return tr;
    });
    fillBody(root.querySelector("#workers"), rows, "No server process has reported yet.", 11);
    const total = payload.total;
    const foot = root.querySelector("#total");
    foot.querySelector(".model").textContent = total.workers + " process" + (total.workers === 1 ? "" : "es");
    const scope = payload.admission.scope;
    foot.querySelector(".limits").textContent =
      scope === "site" ? "site-wide, cap " + total.site_cap : scope === "mixed" ? "mixed" : "per process";
    foot.querySelector(".running").textContent = total.running + " / " + total.cap;
    foot.querySelector(".waiting").textContent = total.waiting + " / " + total.max_queue;
    foot.querySelector(".tokens").textContent = total.tokens_per_s.toFixed(1);
    foot.querySelector(".ttft").textContent = pair(total.latency.ttft_ms);
    foot.querySelector(".queue-wait").textContent = pair(total.latency.queue_wait_ms);
    foot.querySelector(".settings-version").textContent = "saved: " + version(payload.settings_version);
    // The browser chat's and the API's traffic apart.
    root.querySelector("#by-source").textContent = Object.entries(total.by_source || {})
      .map(([source, n]) => (SOURCES[source] || source) + ": " + n.running + " running, " + n.waiting + " waiting")
      .join(". ");
  }

  const SOURCES = { chat: "Chat", api: "API" };

  // How the limits apply: one site queue through Redis, or each process's own.
  const LIMITS = { site: "site-wide", process: "this process", fallback: "this process (Redis unreachable)" };
  const SCOPE_TEXT = {
    site: "Limits apply to the whole site: every process shares one cap, one queue (positions are site-wide) and the per-user limit, through Redis.",
    process: "Limits apply per process: each process has its own cap, queue and per-user limit.",
    mixed: "Some processes share the site queue and some apply their own limits; see the Limits column.",
  };

  function renderAdmission(payload) {
    const admission = payload.admission;
    const warning = root.querySelector("#admission-warning");
    warning.hidden = !admission.fallback.length;
    warning.querySelector(".message").textContent = admission.message;
    const reasons = payload.workers
      .filter((w) => w.admission.fallback)
      .map((w) => {
        const li = document.createElement("li");
        li.textContent = w.worker + ": " + (w.admission.error || "no reason given");
        return li;
      });
    warning.querySelector("ul").replaceChildren(...reasons);
    root.querySelector("#admission-scope").textContent = SCOPE_TEXT[admission.scope] || "";
  }

  function renderRequests(payload) {
    const running = payload.running.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.request = r.request;
      cell(tr, r.user, "user");
      cell(tr, SOURCES[r.source] || r.source, "source");
      cell(tr, r.conversation, "conversation");
      cell(tr, r.worker, "worker");
      cell(tr, seconds(r.since ? payload.time - r.since : null), "num since");
      cell(tr, r.tokens, "num tokens");
      tr.appendChild(document.createElement("td")).appendChild(cancelButton(r.request));
      return tr;
    });
    fillBody(root.querySelector("#running"), running, "Nothing is running.", 7);
    const waiting = payload.waiting.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.request = r.request;
      cell(tr, r.position, "num position");
      cell(tr, r.user, "user");
      cell(tr, SOURCES[r.source] || r.source, "source");
      cell(tr, r.class || "", "class");
      cell(tr, r.conversation, "conversation");
      cell(tr, r.worker, "worker");
      cell(tr, seconds(payload.time - r.since), "num waited");
      tr.appendChild(document.createElement("td")).appendChild(cancelButton(r.request));
      return tr;
    });
    fillBody(root.querySelector("#waiting"), waiting, "Nobody is waiting.", 8);
  }

  function render(payload) {
    renderAdmission(payload);
    renderWorkers(payload);
    renderRequests(payload);
    root.dataset.updates = String(Number(root.dataset.updates) + 1);
  }

  // The chart --------------------------------------------------------------

  function drawHistory(series) {
    const data = [series.time, series.running, series.waiting, series.tokens_per_s];
    const element = root.querySelector("#chart");
    if (chart) {
      chart.setData(data);
      return;
    }
    chart = new uPlot(
      {
        width: Math.max(element.clientWidth, 300),
        height: 240,
        scales: { x: { time: true } },
        series: [
          {},
          { label: "Running", stroke: "#417690", width: 2 },
          { label: "Waiting", stroke: "#ba2121", width: 2 },
          { label: "Tokens/s", stroke: "#79aec8", width: 1, scale: "tps" },
        ],
        axes: [{}, { label: "requests" }, { side: 1, scale: "tps", label: "tokens/s", grid: { show: false } }],
      },
      data,
      element
    );
    window.addEventListener("resize", () => chart.setSize({ width: Math.max(element.clientWidth, 300), height: 240 }));
  }

  async function loadHistory() {
    try {
      const response = await fetch(root.dataset.historyUrl, { credentials: "same-origin" });
      if (response.ok && window.uPlot) drawHistory(await response.json());
    } catch (error) {
      // The next refresh tries again; the live tables do not depend on it.
    }
  }

  // The socket -------------------------------------------------------------

  function connect() {
    const status = root.querySelector("#connection");
    // Logged out (4401) or no longer staff (4403): a reload shows the admin's login.
    socket = connectSocket(root.dataset.wsPath, {
      reloadCodes: [4401, 4403],
      maxDelayMs: 10000,
      onOpen() {
        root.dataset.connected = "true";
        status.textContent = "Live";
      },
      onFrame(frame) {
        if (frame.type === "queue.status") render(frame);
        else if (frame.type === "error" && frame.message) status.textContent = frame.message;
        else if (frame.type === "cancel.sent") status.textContent = "Live";
      },
      onDrop() {
        root.dataset.connected = "false";
        status.textContent = "Disconnected; reconnecting…";
      },
    });
  }

  connect();
  loadHistory();
  setInterval(loadHistory, HISTORY_REFRESH_MS);
})();
