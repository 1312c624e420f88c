// Download Dashboard (SPEC section 15): live over WS /api/events, controls over the JSON API.
// Plain JavaScript, no dependencies, no build step. Authentication is the HttpOnly cookie
// that `GET /?token=...` set; this script never sees the token.
"use strict";

(function () {
  const STATUS_LABELS = {
    pending: "Pending", in_progress: "In progress", recovering: "Recovering", paused: "Paused",
    success: "Success", failed: "Failed", exhausted: "Exhausted", cancelled: "Cancelled",
  };
  // Which controls apply to which status (SPEC 2.2); retry also needs a retry-worthy error when failed.
  const ACTIONS = [
    { action: "pause", label: "Pause", when: (op) => ["pending", "in_progress", "recovering"].includes(op.status) },
    { action: "resume", label: "Resume", when: (op) => op.status === "paused" },
    { action: "retry", label: "Retry now", when: (op) => ["recovering", "exhausted"].includes(op.status)
        || (op.status === "failed" && !!op.error && op.error.retryable) },
    { action: "force-retry", label: "Force retry", when: (op) => ["recovering", "failed", "exhausted"].includes(op.status) },
    { action: "cancel-recovery", label: "Cancel recovery", when: (op) => op.status === "recovering" },
    { action: "cancel", label: "Cancel", danger: true,
      when: (op) => !["success", "cancelled"].includes(op.status) },
    { action: "forget", label: "Remove", when: (op) => ["success", "failed", "exhausted"].includes(op.status),
      title: "Remove from the list (files stay)" },
  ];
  const SETTINGS_HELP = {
    max_retries: ["Max retries", "automatic retries after the first attempt"],
    initial_delay_s: ["Initial delay (s)", "delay before retry 1"],
    backoff_factor: ["Backoff factor", "multiplier per further retry (≥ 1)"],
    max_delay_s: ["Max delay (s)", "cap on any delay"],
    jitter: ["Jitter", "0 to below 1"],
    progress_reset_bytes: ["Progress reset (bytes)", "progress that resets the retry counter"],
    breaker_failure_threshold: ["Breaker threshold", "consecutive failures that open a breaker"],
    breaker_reset_timeout_s: ["Breaker reset (s)", "time open before half-open"],
    breaker_half_open_probes: ["Half-open probes", "attempts let through while half-open"],
    max_concurrent: ["Max concurrent", "operations running at once"],
    max_per_host: ["Max per host", "downloads per host at once"],
    max_connections: ["Connections per download", "at most; the engine adds them while they help"],
    max_connections_per_host: ["Connections per host", "all downloads from one host together"],
    min_segment_bytes: ["Min segment (bytes)", "no piece of a file is split below this"],
    max_download_rate_bps: ["Max download rate (bytes/s)", "all downloads together; 0 = unlimited"],
    checkpoint_interval_s: ["Checkpoint interval (s)", "how often progress is saved"],
    connect_timeout_s: ["Connect timeout (s)", ""],
    stall_timeout_s: ["Stall timeout (s)", "no byte for this long is a stall"],
    download_root: ["Download root", "destinations must be inside it; set where the server starts"],
    history_limit: ["History limit", "finished operations kept"],
  };
  const RECONNECT_MIN_MS = 250;
  const RECONNECT_MAX_MS = 10000;

  const ops = new Map();
  let settings = null;
  let socket = null;
  let reconnectDelay = RECONNECT_MIN_MS;
  let reconnectTimer = null;
  let breakerRefresh = null;
  const refreshing = new Map();

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  // ---- formatting ----------------------------------------------------------------------------

  function bytes(n) {
    if (n === null || n === undefined) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
  }

  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60), sec = s % 60;
    if (m < 60) return `${m}m ${String(sec).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  }

  function opTitle(op) {
    const spec = op.spec || {};
    if (op.kind === "download") {
      const dest = spec.dest || spec.url || op.id;
      return String(dest).split(/[\\/]/).pop() || dest;
    }
    if (spec.name) return spec.name;
    if (Array.isArray(spec.argv)) return spec.argv.join(" ");
    return op.id;
  }

  function opSubtitle(op) {
    const spec = op.spec || {};
    if (op.kind === "download") return spec.url || "";
    if (op.kind === "project" && op.steps_total) {
      return `step ${(op.step ?? 0) + 1}/${op.steps_total} · ${op.steps_done ?? 0} done`;
    }
    return op.kind;
  }

  // ---- API -----------------------------------------------------------------------------------

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, error: { code: "E_NET_UNREACHABLE", message: "the server is not reachable" } };
    }
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch (err) { data = null; }
    }
    if (response.status === 401) showSignedOut();
    if (!response.ok) {
      const error = (data && data.error) || { code: `HTTP_${response.status}`, message: response.statusText };
      return { ok: false, status: response.status, error };
    }
    return { ok: true, status: response.status, data };
  }

  function toast(message, kind = "error") {
    const node = $("#toast");
    node.textContent = message;
    node.dataset.kind = kind;
    node.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { node.hidden = true; }, 6000);
  }

  function showSignedOut() {
    const conn = $("#connection");
    conn.dataset.state = "signed-out";
    conn.textContent = "not signed in: open the link `recovery serve` printed";
  }

  // ---- statistics ----------------------------------------------------------------------------

  function renderStats(stats) {
    if (!stats) return;
    for (const card of $$("[data-stat]")) {
      const key = card.dataset.stat;
      if (!(key in stats)) continue;
      let value = stats[key];
      if (key === "bytes_downloaded") value = bytes(value);
      else if (key === "average_recovery_time_s") value = stats.recovered_operations ? `${Number(value).toFixed(1)}s` : "–";
      $(".value", card).textContent = value;
    }
  }

  // ---- operations table ----------------------------------------------------------------------

  function rowFor(op) {
    let row = $(`#ops-body tr[data-op-id="${CSS.escape(op.id)}"]`);
    if (row) return row;
    row = el("tr", { "data-op-id": op.id, "data-kind": op.kind },
      el("td", { class: "name" }, el("div", { class: "title" }), el("div", { class: "subtitle" })),
      el("td", { class: "status-cell" }, el("span", { class: "badge" })),
      el("td", { class: "progress-col" },
        el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" },
          el("div", { class: "fill" })),
        el("div", { class: "progress-text" })),
      el("td", { class: "rate" }),
      el("td", { class: "eta" }),
      el("td", { class: "recovery" },
        el("div", { class: "attempt" }), el("div", { class: "countdown" }),
        el("div", { class: "error-message" }), el("div", { class: "suggestion" })),
      el("td", { class: "actions" }));
    const body = $("#ops-body");
    body.prepend(row);
    return row;
  }

  function renderOp(op) {
    const row = rowFor(op);
    row.dataset.status = op.status;
    $(".title", row).textContent = opTitle(op);
    $(".title", row).title = op.resource || "";
    $(".subtitle", row).textContent = opSubtitle(op);
    const badge = $(".badge", row);
    badge.dataset.status = op.status;
    badge.textContent = STATUS_LABELS[op.status] || op.status;

    const total = op.bytes_total, done = op.bytes_done || 0;
    const pct = total ? Math.min(100, (100 * done) / total) : (op.status === "success" ? 100 : 0);
    const bar = $(".bar", row);
    bar.setAttribute("aria-valuenow", pct.toFixed(1));
    bar.dataset.indeterminate = total ? "false" : String(op.status === "in_progress");
    $(".fill", row).style.width = `${pct}%`;
    $(".progress-text", row).textContent = total
      ? `${bytes(done)} / ${bytes(total)} (${pct.toFixed(pct < 10 ? 1 : 0)}%)` : (done ? bytes(done) : "");

    const running = op.status === "in_progress";
    const conns = running && op.connections > 1 ? ` x${op.connections}` : "";
    $(".rate", row).textContent = running && op.rate_bps ? `${bytes(op.rate_bps)}/s${conns}` : "–";
    if (conns) $(".rate", row).title = `${op.connections} connections open`;
    else $(".rate", row).removeAttribute("title");
    $(".eta", row).textContent = running && op.eta_s !== null && op.eta_s !== undefined ? duration(op.eta_s) : "–";

    const attempt = $(".attempt", row);
    const showAttempt = op.attempt > 0 && !["success", "cancelled"].includes(op.status);
    attempt.textContent = showAttempt ? `Attempt ${op.attempt}/${op.max_retries}` : "";
    const countdown = $(".countdown", row);
    if (op.status === "recovering" && op.next_retry_at) countdown.dataset.nextRetryAt = String(op.next_retry_at);
    else delete countdown.dataset.nextRetryAt;
    updateCountdown(countdown);

    const err = op.error;
    const showError = err && ["recovering", "failed", "exhausted"].includes(op.status);
    $(".error-message", row).textContent = showError ? `${err.code}: ${err.message}` : "";
    $(".suggestion", row).textContent = showError ? err.suggestion : "";

    renderActions(row, op);
    $("#ops-empty").hidden = ops.size > 0;
  }

  function renderActions(row, op) {
    const cell = $(".actions", row);
    const wanted = ACTIONS.filter((a) => a.when(op));
    const key = wanted.map((a) => a.action).join(",");
    if (cell.dataset.key === key) return;
    cell.dataset.key = key;
    cell.replaceChildren(...wanted.map((a) => el("button", {
      type: "button", class: a.danger ? "danger" : "", "data-action": a.action, title: a.title || null,
    }, a.label)));
  }

  function updateCountdown(node) {
    const at = Number(node.dataset.nextRetryAt || 0);
    if (!at) { node.textContent = ""; return; }
    const left = at - Date.now() / 1000;
    node.textContent = left > 0.05 ? `Next try in ${left < 10 ? left.toFixed(1) : Math.ceil(left)}s` : "Retrying…";
  }

  function removeOp(id) {
    ops.delete(id);
    const row = $(`#ops-body tr[data-op-id="${CSS.escape(id)}"]`);
    if (row) row.remove();
    $("#ops-empty").hidden = ops.size > 0;
  }

  function upsert(op) {
    ops.set(op.id, op);
    renderOp(op);
  }

  function patch(id, fields) {
    const op = ops.get(id);
    if (!op) { refreshOp(id); return; }
    Object.assign(op, fields);
    renderOp(op);
  }

  // Status changes also refresh the whole record from the API (one request in flight per op).
  async function refreshOp(id) {
    if (refreshing.get(id)) { refreshing.set(id, "again"); return; }
    refreshing.set(id, "busy");
    try {
      for (;;) {
        const res = await api("GET", `/api/operations/${encodeURIComponent(id)}`);
        if (res.ok) upsert(res.data);
        else if (res.status === 404 && ops.has(id) && ops.get(id).status !== "cancelled") removeOp(id);
        if (refreshing.get(id) !== "again") break;
        refreshing.set(id, "busy");
      }
    } finally {
      refreshing.delete(id);
    }
  }

  // ---- events --------------------------------------------------------------------------------

  function onEvent(ev) {
    switch (ev.type) {
      case "snapshot": {
        const seen = new Set();
        for (const op of ev.operations) { seen.add(op.id); ops.set(op.id, op); }
        for (const id of Array.from(ops.keys())) if (!seen.has(id)) removeOp(id);
        $("#ops-body").replaceChildren();
        for (const op of ev.operations) renderOp(op);
        $("#ops-empty").hidden = ops.size > 0;
        renderStats(ev.stats);
        loadBreakers();
        loadSettings();
        break;
      }
      case "submitted":
        if (!ops.has(ev.op_id)) {
          upsert({ id: ev.op_id, kind: ev.kind, spec: ev.spec, status: "pending", attempt: 0, max_retries: 0,
                   bytes_done: 0, bytes_total: null, error: null });
        }
        refreshOp(ev.op_id);
        break;
      case "status": {
        const fields = { status: ev.status };
        fields.error = ev.error || null;
        if ("attempt" in ev) fields.attempt = ev.attempt;
        if ("max_retries" in ev) fields.max_retries = ev.max_retries;
        fields.next_retry_at = ev.status === "recovering" ? (ev.next_retry_at ?? null) : null;
        patch(ev.op_id, fields);
        if (ev.status === "cancelled") {
          setTimeout(() => { if (ops.get(ev.op_id)?.status === "cancelled") removeOp(ev.op_id); }, 3000);
        } else {
          refreshOp(ev.op_id);
        }
        break;
      }
      case "progress": {
        const fields = { bytes_done: ev.bytes_done, bytes_total: ev.bytes_total, rate_bps: ev.rate_bps, eta_s: ev.eta_s };
        for (const k of ["step", "steps_done", "steps_total", "connections"]) if (k in ev) fields[k] = ev[k];
        patch(ev.op_id, fields);
        break;
      }
      case "retry_scheduled":
        patch(ev.op_id, { attempt: ev.attempt, max_retries: ev.max_retries, next_retry_at: ev.next_retry_at,
                          error: ev.error, status: "recovering" });
        break;
      case "breaker":
        scheduleBreakers();
        break;
      case "stats":
        renderStats(ev);
        break;
      case "settings":
        if (ev.settings) renderSettings(ev.settings, false);
        break;
      case "forgotten":  // removed from history (DELETE elsewhere, or history_limit)
        if (ops.has(ev.op_id)) removeOp(ev.op_id);
        break;
      default:
        break;
    }
  }

  function setConnection(state, text) {
    const conn = $("#connection");
    if (conn.dataset.state === "signed-out" && state !== "live") return;
    conn.dataset.state = state;
    conn.textContent = text;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    setConnection("connecting", "connecting…");
    let ws;
    try {
      ws = new WebSocket(`${scheme}://${location.host}/api/events`);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.onopen = () => {
      reconnectDelay = RECONNECT_MIN_MS;
      setConnection("live", "live");
    };
    ws.onmessage = (message) => {
      let ev;
      try { ev = JSON.parse(message.data); } catch (err) { return; }
      onEvent(ev);
    };
    ws.onclose = () => {
      if (socket !== ws) return;
      socket = null;
      scheduleReconnect();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  function scheduleReconnect() {
    const delay = Math.min(RECONNECT_MAX_MS, reconnectDelay) * (0.8 + 0.4 * Math.random());
    reconnectDelay = Math.min(RECONNECT_MAX_MS, reconnectDelay * 2);
    setConnection("reconnecting", `disconnected: reconnecting in ${(delay / 1000).toFixed(1)}s`);
    reconnectTimer = setTimeout(async () => {
      // A refused handshake is invisible to scripts: ask the API whether the cookie still works.
      const res = await api("GET", "/api/recovery/performance");
      if (res.status === 401) { scheduleReconnect(); return; }
      connect();
    }, delay);
  }

  // ---- breakers ------------------------------------------------------------------------------

  function scheduleBreakers() {
    if (breakerRefresh) return;
    breakerRefresh = setTimeout(() => { breakerRefresh = null; loadBreakers(); }, 100);
  }

  async function loadBreakers() {
    const res = await api("GET", "/api/breakers");
    if (!res.ok) return;
    const body = $("#breakers-body");
    body.replaceChildren(...res.data.map((b) => el("tr", { "data-scope": b.scope, "data-state": b.state },
      el("td", { text: b.scope }),
      el("td", {}, el("span", { class: "badge breaker", "data-state": b.state, text: b.state.replace("_", "-") })),
      el("td", { text: String(b.consecutive_failures) }),
      el("td", { class: "countdown", "data-next-retry-at": b.state === "open" && b.half_open_at ? String(b.half_open_at) : null }),
      el("td", { text: String(b.waiting) }))));
    for (const node of $$(".countdown", body)) updateCountdown(node);
    $("#breakers-empty").hidden = res.data.length > 0;
  }

  // ---- settings ------------------------------------------------------------------------------

  async function loadSettings() {
    const res = await api("GET", "/api/settings");
    if (res.ok) renderSettings(res.data, true);
  }

  function renderSettings(values, force) {
    settings = values;
    const grid = $("#settings-fields");
    for (const [name, value] of Object.entries(values)) {
      let input = $(`input[name="${name}"]`, grid);
      if (!input) {
        const [label, help] = SETTINGS_HELP[name] || [name, ""];
        input = el("input", { name, id: `setting-${name}`, type: "text", "data-setting": name,
                              inputmode: name === "download_root" ? null : "decimal", spellcheck: "false" });
        if (name === "download_root") input.readOnly = true;  // the server refuses changes (403)
        grid.append(el("label", { class: "field", for: `setting-${name}` },
          el("span", { class: "setting-name", text: label }),
          input,
          help ? el("small", { text: help }) : null,
          el("span", { class: "field-error", "data-for": name })));
      }
      const shown = value === null || value === undefined ? "" : String(value);
      if (force || document.activeElement !== input) {
        input.value = shown;
        input.dataset.saved = shown;
      }
    }
  }

  function clearErrors(form) {
    for (const node of $$(".field-error, .form-error", form)) node.textContent = "";
    for (const node of $$("[aria-invalid]", form)) node.removeAttribute("aria-invalid");
  }

  function showFieldError(form, field, message, fallbackFor) {
    let slot = field ? $(`.field-error[data-for="${CSS.escape(field)}"]`, form) : null;
    if (slot) {
      const input = $(`[name="${CSS.escape(field)}"]`, form);
      if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
    } else {
      slot = $(`.form-error[data-for="${fallbackFor}"]`, form) || $(".form-result", form);
    }
    if (slot) slot.textContent = message;
  }

  async function saveSettings(event) {
    event.preventDefault();
    const form = $("#settings-form");
    clearErrors(form);
    const result = $("#settings-result");
    result.textContent = "";
    result.dataset.kind = "";
    const changes = {};
    for (const input of $$("input[data-setting]", form)) {
      if (input.value === input.dataset.saved) continue;
      const name = input.dataset.setting, raw = input.value.trim();
      if (name === "download_root") changes[name] = raw === "" ? null : raw;
      else changes[name] = raw !== "" && isFinite(Number(raw)) ? Number(raw) : raw;
    }
    if (Object.keys(changes).length === 0) {
      result.textContent = "Nothing changed.";
      return;
    }
    const res = await api("PUT", "/api/settings", changes);
    if (res.ok) {
      renderSettings(res.data, true);
      result.dataset.kind = "ok";
      result.textContent = "Saved.";
    } else {
      result.dataset.kind = "error";
      showFieldError(form, res.error.field, res.error.message, "settings");
      if (!res.error.field) result.textContent = `${res.error.code}: ${res.error.message}`;
    }
  }

  // ---- add a download ------------------------------------------------------------------------

  async function addDownload(event) {
    event.preventDefault();
    const form = $("#add-form");
    clearErrors(form);
    const body = { kind: "download", url: form.url.value.trim() };
    if (form.dest.value.trim()) body.dest = form.dest.value.trim();
    if (form.sha256.value.trim()) body.sha256 = form.sha256.value.trim();
    if (form.overwrite.checked) body.overwrite = true;
    const button = $("#add-submit");
    button.disabled = true;
    try {
      const res = await api("POST", "/api/operations", body);
      if (res.ok) {
        upsert(res.data);
        form.reset();
      } else {
        showFieldError(form, res.error.field, res.error.message, "add");
      }
    } finally {
      button.disabled = false;
    }
  }

  // ---- controls ------------------------------------------------------------------------------

  async function onAction(event) {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const row = button.closest("tr[data-op-id]");
    const id = row.dataset.opId, action = button.dataset.action;
    button.disabled = true;
    try {
      const res = action === "forget"
        ? await api("DELETE", `/api/operations/${encodeURIComponent(id)}`)
        : await api("POST", `/api/operations/${encodeURIComponent(id)}/${action}`);
      if (!res.ok) {
        toast(`${res.error.code}: ${res.error.message}`);
        refreshOp(id);
      } else if (action === "forget") {
        removeOp(id);
      } else if (res.data) {
        upsert(res.data);
      }
    } finally {
      button.disabled = false;
    }
  }

  function tick() {
    for (const node of $$(".countdown[data-next-retry-at]")) updateCountdown(node);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#ops-body").addEventListener("click", onAction);
    $("#add-form").addEventListener("submit", addDownload);
    $("#settings-form").addEventListener("submit", saveSettings);
    setInterval(tick, 200);
    connect();
  });
})();
