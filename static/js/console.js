// The admin queue console: renders the live payload from /ws/queue/ and the
// last hour's snapshots. Every value from the server goes in as text, never
// as HTML, because user names and model errors are not ours to trust. Words
// come from the page's catalog (gettext, ngettext, interpolate: the /jsi18n/
// script the template loads first).

import { connectSocket } from "./socket.js";

(function () {
  const root = document.getElementById("console");
  if (!root) return;
  const HISTORY_REFRESH_MS = 5000;
  let socket = null; // connectSocket's {send, isOpen}
  let chart = null;

  // Formatting -------------------------------------------------------------

  const LANGUAGE = document.documentElement.lang || "en";
  const say = (format, values) => interpolate(format, values, true);

  function number(value, digits) {
    return value.toLocaleString(LANGUAGE, { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function seconds(value) {
    if (value === null || value === undefined) return "—";
    if (value < 60) return say(gettext("%(seconds)s s"), { seconds: number(value, value < 10 ? 1 : 0) });
    return say(gettext("%(minutes)s min %(seconds)s s"), {
      minutes: number(Math.floor(value / 60), 0), seconds: number(Math.round(value % 60), 0),
    });
  }

  function ms(value) {
    if (value === null || value === undefined) return "—";
    return value < 1000 ? say(gettext("%(ms)s ms"), { ms: number(value, 0) }) : say(gettext("%(seconds)s s"), { seconds: number(value / 1000, 2) });
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
    button.textContent = gettext("Cancel");
    button.addEventListener("click", () => {
      button.disabled = true;
      if (socket) socket.send({ type: "cancel", request: request });
    });
    return button;
  }

  // Rendering --------------------------------------------------------------

  function version(number) {
    return number ? say(gettext("version %(number)s"), { number: number }) : gettext("environment defaults");
  }

  function renderWorkers(payload) {
    const rows = payload.workers.map((w) => {
      const tr = document.createElement("tr");
      tr.dataset.worker = w.worker;
      cell(tr, w.local ? say(gettext("%(worker)s (this process)"), { worker: w.worker }) : w.worker, "name");
      // What generates: "local, in-process" or "openai, http://gpu-1:8000/v1",
      // then the model's name once the backend has loaded or reached it.
      const backend = [w.model.backend, w.model.host].filter(Boolean).join(", ");
      cell(tr, backend + (w.model.name ? ": " + w.model.name : ""), "backend");
      const state = MODEL_STATES[w.model.state] || w.model.state;
      const model = cell(tr, state + (w.model.error ? ": " + w.model.error : ""), "model");
      if (w.model.state === "failed") model.classList.add("model-failed");
      const limits = cell(tr, LIMITS[w.admission.fallback ? "fallback" : w.admission.scope] || w.admission.scope, "limits");
      if (w.admission.fallback) limits.classList.add("fallback");
      // `bound` is the cap, or the process's own bound when that is lower.
      cell(tr, w.running + " / " + w.bound, "num running");
      cell(tr, w.process_max_concurrency ? w.process_max_concurrency : gettext("the cap"), "num own-bound");
      cell(tr, w.waiting + " / " + w.max_queue, "num waiting");
      cell(tr, number(w.tokens_per_s, 1), "num tokens");
      cell(tr, pair(w.latency.ttft_ms), "num ttft");
      cell(tr, pair(w.latency.queue_wait_ms), "num queue-wait");
      const settings = cell(
        tr,
        w.behind
          ? say(gettext("%(runs)s (behind: %(saved)s is saved)"), {
            runs: version(w.settings_version), saved: version(payload.settings_version),
          })
          : version(w.settings_version),
        "settings-version"
      );
      if (w.behind) settings.classList.add("behind");
      return tr;
    });
    fillBody(root.querySelector("#workers"), rows, gettext("No server process has reported yet."), 11);
    const total = payload.total;
    const foot = root.querySelector("#total");
    foot.querySelector(".model").textContent = interpolate(
      ngettext("%(count)s process", "%(count)s processes", total.workers), { count: total.workers }, true
    );
    const scope = payload.admission.scope;
    foot.querySelector(".limits").textContent =
      scope === "site" ? say(gettext("site-wide, cap %(cap)s"), { cap: total.site_cap })
        : scope === "mixed" ? gettext("mixed") : gettext("per process");
    foot.querySelector(".running").textContent = total.running + " / " + total.cap;
    foot.querySelector(".waiting").textContent = total.waiting + " / " + total.max_queue;
    foot.querySelector(".tokens").textContent = number(total.tokens_per_s, 1);
    foot.querySelector(".ttft").textContent = pair(total.latency.ttft_ms);
    foot.querySelector(".queue-wait").textContent = pair(total.latency.queue_wait_ms);
    foot.querySelector(".settings-version").textContent = say(gettext("saved: %(version)s"), { version: version(payload.settings_version) });
    // The browser chat's and the API's traffic apart.
    root.querySelector("#by-source").textContent = Object.entries(total.by_source || {})
      .map(([source, n]) => say(gettext("%(source)s: %(running)s running, %(waiting)s waiting"), {
        source: SOURCES[source] || source, running: n.running, waiting: n.waiting,
      }))
      .join(gettext(". "));
  }

  const SOURCES = { chat: gettext("Chat"), api: gettext("API") };
  // The model's state (ModelState), in words.
  const MODEL_STATES = {
    loading: gettext("loading"), ready: gettext("ready"), failed: gettext("failed"),
  };

  // How the limits apply: one site queue through Redis, or each process's own.
  const LIMITS = {
    site: gettext("site-wide"), process: gettext("this process"), fallback: gettext("this process (Redis unreachable)"),
  };
  const SCOPE_TEXT = {
    site: gettext("Limits apply to the whole site: every process shares one cap, one queue (positions are site-wide) and the per-user limit, through Redis."),
    process: gettext("Limits apply per process: each process has its own cap, queue and per-user limit."),
    mixed: gettext("Some processes share the site queue and some apply their own limits; see the Limits column."),
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
        li.textContent = w.worker + ": " + (w.admission.error || gettext("no reason given"));
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
    fillBody(root.querySelector("#running"), running, gettext("Nothing is running."), 7);
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
    fillBody(root.querySelector("#waiting"), waiting, gettext("Nobody is waiting."), 8);
  }

  function render(payload) {
    renderAdmission(payload);
    renderWorkers(payload);
    renderRequests(payload);
    root.dataset.updates = String(Number(root.dataset.updates) + 1);
  }

  // The chart --------------------------------------------------------------

  // The chart's clock in the reader's language and time zone: ticks by the
  // minute (the chart spans an hour), the legend to the second.
  const tick = new Intl.DateTimeFormat(LANGUAGE, { hour: "numeric", minute: "2-digit" });
  const clock = new Intl.DateTimeFormat(LANGUAGE, { hour: "numeric", minute: "2-digit", second: "2-digit" });

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
        // uPlot words its time axis and legend in English ("Time", 1:05pm):
        // both are the reader's clock here, as the tables' numbers are.
        series: [
          { label: gettext("Time"), value: (u, ts) => (ts == null ? "–" : clock.format(ts * 1000)) },
          { label: gettext("Running"), stroke: "#417690", width: 2 },
          { label: gettext("Waiting"), stroke: "#ba2121", width: 2 },
          { label: gettext("Tokens/s"), stroke: "#79aec8", width: 1, scale: "tps" },
        ],
        axes: [
          { values: (u, splits) => splits.map((ts) => tick.format(ts * 1000)) },
          { label: gettext("requests") },
          { side: 1, scale: "tps", label: gettext("tokens/s"), grid: { show: false } },
        ],
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
        status.textContent = gettext("Live");
      },
      onFrame(frame) {
        if (frame.type === "queue.status") render(frame);
        else if (frame.type === "error" && frame.message) status.textContent = frame.message;
        else if (frame.type === "cancel.sent") status.textContent = gettext("Live");
      },
      onDrop() {
        root.dataset.connected = "false";
        status.textContent = gettext("Disconnected; reconnecting…");
      },
    });
  }

  connect();
  loadHistory();
  setInterval(loadHistory, HISTORY_REFRESH_MS);
})();
