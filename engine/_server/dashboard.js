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
  // No progress event for this long while in progress: nothing arrives (the engine's rate window).
  const STALLED_MS = 3000;
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

  // Where the operation writes: a download's file, an install's folder (SPEC 15).
  function opDestination(op) {
    const spec = op.spec || {};
    return spec.dest || spec.cwd || "";
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
      el("td", { class: "name" }, el("div", { class: "title" }), el("div", { class: "subtitle" }),
        el("div", { class: "dest" })),
      el("td", { class: "status-cell" }, el("span", { class: "badge" })),
      el("td", { class: "progress-col" },
        el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" },
          el("div", { class: "fill" })),
        el("div", { class: "progress-text" })),
      el("td", { class: "rate" }, el("span", { class: "rate-value" }), el("div", { class: "connections" })),
      el("td", { class: "eta" }),
      el("td", { class: "recovery" },
        el("div", { class: "attempt" }), el("div", { class: "countdown" }),
        el("div", { class: "error-message" }), el("div", { class: "suggestion" }),
        el("div", { class: "recovered-from" })),
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
    const dest = opDestination(op);
    $(".dest", row).textContent = dest ? `→ ${dest}` : "";
    $(".dest", row).title = dest;
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
    const stalled = isStalled(op);
    row.dataset.stalled = String(stalled);
    $(".rate-value", row).textContent = stalled ? "stalled" : running && op.rate_bps ? `${bytes(op.rate_bps)}/s` : "–";
    const conns = Number(op.connections || 0);
    $(".connections", row).textContent = running && conns > 0
      ? `${conns} connection${conns === 1 ? "" : "s"}` : "";
    $(".eta", row).textContent = running && !stalled && op.eta_s !== null && op.eta_s !== undefined
      ? duration(op.eta_s) : "–";

    const attempt = $(".attempt", row);
    const recovered = !!op.last_error && op.attempt > 0 && ["in_progress", "success"].includes(op.status);
    const showAttempt = op.attempt > 0 && (!["success", "cancelled"].includes(op.status) || recovered);
    attempt.textContent = showAttempt ? `Attempt ${op.attempt}/${op.max_retries}` : "";
    const countdown = $(".countdown", row);
    if (op.status === "recovering" && op.next_retry_at) countdown.dataset.nextRetryAt = String(op.next_retry_at);
    else delete countdown.dataset.nextRetryAt;
    updateCountdown(countdown);

    const err = op.error;
    const showError = err && ["recovering", "failed", "exhausted"].includes(op.status);
    $(".error-message", row).textContent = showError ? `${err.code}: ${err.message}` : "";
    $(".suggestion", row).textContent = showError ? err.suggestion : "";
    // Flowing again (or done) after a retry: the failure is history, shown quietly (SPEC 2.1, 15).
    $(".recovered-from", row).textContent = recovered
      ? `recovered from ${op.last_error.code}: ${op.last_error.message}` : "";

    renderActions(row, op);
    renderHelp(row, op);
    $("#ops-empty").hidden = ops.size > 0;
  }

  // Rate and ETA are recent figures: when nothing has arrived for a while they say so, never an old value.
  function isStalled(op) {
    if (op.status !== "in_progress" || !(op.bytes_done > 0)) return false;
    return !op.rate_bps || Date.now() - (op.heardAt || 0) > STALLED_MS;
  }

  function renderActions(row, op) {
    const cell = $(".actions", row);
    const wanted = ACTIONS.filter((a) => a.when(op));
    const key = wanted.map((a) => a.action).join(",");
    if (cell.dataset.key === key) return;
    cell.dataset.key = key;
    cell.replaceChildren(...wanted.map((a) => el("button", {
      type: "button", class: a.danger ? "danger" : "", "data-action": a.action, title: a.title || null,
      disabled: !isLive(),
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
    op.heardAt = Date.now();
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
        for (const op of ev.operations) { seen.add(op.id); op.heardAt = Date.now(); ops.set(op.id, op); }
        for (const id of Array.from(ops.keys())) if (!seen.has(id)) removeOp(id);
        $("#ops-body").replaceChildren();
        for (const op of ev.operations) renderOp(op);
        $("#ops-empty").hidden = ops.size > 0;
        renderStats(ev.stats);
        loadBreakers();
        loadSettings();
        loadHistory();
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
        fields.last_error = ev.last_error || (ev.status === "recovering" ? null : ops.get(ev.op_id)?.last_error) || null;
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
        fields.heardAt = Date.now();
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
        scheduleHistory();
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

  function isLive() {
    return $("#connection").dataset.state === "live";
  }

  function setConnection(state, text) {
    const conn = $("#connection");
    if (conn.dataset.state === "signed-out" && state !== "live") return;
    conn.dataset.state = state;
    conn.textContent = text;
    // While disconnected the page cannot know what the controls would act on: they wait (SPEC 15).
    const live = state === "live";
    document.body.dataset.connection = state;
    for (const button of $$("#ops-body button[data-action], #add-submit, #settings-save")) button.disabled = !live;
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
    if (res.ok) renderSettings(res.data, false);
  }

  // force: after this page saved them (what the user typed is now the saved value).
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
      // A value the user typed and has not saved yet is theirs: a reload (a reconnect, another
      // client's change) moves what it is compared with, never what they typed.
      const edited = input.dataset.saved !== undefined && input.value !== input.dataset.saved;
      if (force || !edited) input.value = shown;
      input.dataset.saved = shown;
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
      button.disabled = !isLive();
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
      button.disabled = !isLive();
    }
  }

  // ---- help when things go wrong (SPEC 10.1, 10.2): history chart, attempt timeline, report ----
  // Self-contained: renderOp calls renderHelp(row, op); events call loadHistory / scheduleHistory.

  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHART_HEIGHT = 240;
  const CODE_COLORS = {
    E_NET_INTERRUPTED: "#e08a00", E_NET_TIMEOUT: "#d4b106", E_NET_UNREACHABLE: "#7b57d1",
    E_SERVER_OVERLOAD: "#d1453b", E_HTTP_CLIENT: "#2a8fbd", E_AUTH: "#b8327a", E_INTEGRITY: "#0f9b8e",
    E_DISK_FULL: "#6d4c41", E_PERMISSION: "#8d6e63", E_TLS: "#546e7a", E_CIRCUIT_OPEN: "#9e9e9e",
    E_INSTALL_FAILED: "#5c6bc0", E_INTERNAL: "#37474f",
  };
  const SPARE_COLORS = ["#e377c2", "#17becf", "#bcbd22", "#8c564b", "#7f7f7f", "#1f77b4"];
  const TRIGGER_LABELS = {
    submit: "first start", automatic: "automatic retry", retry_now: "retry now", force_retry: "force retry",
    resume: "resume",
  };
  const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

  let historyHours = 24;
  let historyData = null;
  let historyTimer = null;
  let historyAsked = 0;
  const expanded = new Set();
  const reports = new Map();  // op id -> {doc, text} of the last report shown

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function codeColor(code, order) {
    return CODE_COLORS[code] || SPARE_COLORS[Math.max(0, order) % SPARE_COLORS.length];
  }

  function niceStep(max, ticks) {
    const raw = max / ticks;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  // A round step in the unit the bytes are shown in (KiB, MiB...), so the axis reads 500 KiB/s, not 488.
  function binaryStep(max, ticks) {
    let unit = 1;
    while (max / unit >= 1024 && unit < 1024 ** 4) unit *= 1024;
    return niceStep(max / unit, ticks) * unit;
  }

  function shortDuration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    return s < 10 ? `${Number(s.toFixed(s < 1 ? 2 : 1))}s` : duration(s);
  }

  function hourLabel(ts, long) {
    const d = new Date(ts * 1000);
    const hh = `${String(d.getHours()).padStart(2, "0")}:00`;
    return long ? `${WEEKDAYS[d.getDay()]} ${hh}` : hh;
  }

  // Average throughput of an hour: its bytes over its length (the current hour: the part gone by).
  function throughputOf(bucket) {
    const elapsed = Math.min(3600, Math.max(60, Date.now() / 1000 - bucket.hour));
    return bucket.bytes_received / elapsed;
  }

  async function loadHistory() {
    clearTimeout(historyTimer);
    historyTimer = null;
    const asked = ++historyAsked;
    const res = await api("GET", `/api/recovery/history?hours=${historyHours}`);
    if (!res.ok || asked !== historyAsked) return;  // a later request (or another period) won
    historyData = res.data;
    drawHistory(historyData);
  }

  function scheduleHistory() {
    if (historyTimer) return;
    historyTimer = setTimeout(loadHistory, 1000);
  }

  function drawHistory(data) {
    const chart = $("#history-chart");
    const buckets = data.buckets || [];
    const totals = data.totals || { failures_by_code: {} };
    const codes = Object.keys(totals.failures_by_code || {})
      .sort((a, b) => totals.failures_by_code[b] - totals.failures_by_code[a] || a.localeCompare(b));
    const width = Math.max(360, Math.round(chart.clientWidth || chart.getBoundingClientRect().width || 900));
    const m = { left: 46, right: 82, top: 24, bottom: 30 };
    const plotW = width - m.left - m.right, plotH = CHART_HEIGHT - m.top - m.bottom;
    chart.setAttribute("viewBox", `0 0 ${width} ${CHART_HEIGHT}`);
    chart.setAttribute("width", String(width));

    const n = Math.max(1, buckets.length);
    const slot = plotW / n;
    const barW = Math.max(1.5, Math.min(42, slot * 0.7));
    const maxFailures = Math.max(1, ...buckets.map((b) => b.failures || 0));
    const fStep = Math.max(1, niceStep(maxFailures, 4));
    const fTop = Math.max(fStep, Math.ceil(maxFailures / fStep) * fStep);
    const rates = buckets.map(throughputOf);
    const maxRate = Math.max(0, ...rates);
    const rStep = maxRate > 0 ? binaryStep(maxRate, 4) : 1;
    const rTop = maxRate > 0 ? Math.ceil(maxRate / rStep) * rStep : 1;
    const y = (v) => m.top + plotH - (plotH * v) / fTop;
    const yRate = (v) => m.top + plotH - (plotH * v) / rTop;
    const x = (i) => m.left + slot * i + slot / 2;

    const nodes = [];
    for (let v = 0; v <= fTop + 1e-9; v += fStep) {
      nodes.push(svg("line", { class: "grid", x1: m.left, x2: m.left + plotW, y1: y(v), y2: y(v) }));
      nodes.push(svg("text", { class: "axis axis-left", x: m.left - 6, y: y(v) + 4, "text-anchor": "end" },
        String(Math.round(v))));
    }
    if (maxRate > 0) {
      for (let v = 0; v <= rTop + 1e-9; v += rStep) {
        nodes.push(svg("text", { class: "axis axis-right", x: m.left + plotW + 6, y: yRate(v) + 4 },
          `${bytes(Math.round(v))}/s`));
      }
    }
    nodes.push(svg("text", { class: "axis-title", x: m.left, y: 10 }, "failures per hour"));
    nodes.push(svg("text", { class: "axis-title", x: m.left + plotW + m.right - 4, y: 10, "text-anchor": "end" },
      "throughput"));
    const every = Math.max(1, Math.ceil(n / 12));
    buckets.forEach((b, i) => {
      if ((n - 1 - i) % every !== 0) return;
      nodes.push(svg("text", { class: "axis axis-bottom", x: x(i), y: CHART_HEIGHT - 10, "text-anchor": "middle" },
        hourLabel(b.hour, n > 24)));
    });

    buckets.forEach((b, i) => {
      let base = 0;
      const when = `${hourLabel(b.hour, true)}–${hourLabel(b.hour + 3600, false)}`;
      codes.forEach((code, order) => {
        const count = (b.failures_by_code || {})[code] || 0;
        if (!count) return;
        const rect = svg("rect", {
          class: "fail-bar", "data-code": code, "data-hour": b.hour, "data-count": count,
          x: x(i) - barW / 2, y: y(base + count), width: barW, height: Math.max(1, y(base) - y(base + count)),
          fill: codeColor(code, order),
        });
        rect.append(svg("title", {}, `${when}: ${code} × ${count}`));
        nodes.push(rect);
        base += count;
      });
    });

    if (maxRate > 0) {
      const points = buckets.map((b, i) => `${x(i).toFixed(1)},${yRate(rates[i]).toFixed(1)}`);
      nodes.push(svg("polyline", { class: "throughput", points: points.join(" ") }));
      buckets.forEach((b, i) => {
        if (!b.bytes_received) return;
        const dot = svg("circle", { class: "throughput-point", cx: x(i), cy: yRate(rates[i]), r: 3.5,
                                    "data-hour": b.hour, "data-bps": Math.round(rates[i]) });
        dot.append(svg("title", {}, `${hourLabel(b.hour, true)}: ${bytes(b.bytes_received)} received, `
          + `${bytes(Math.round(rates[i]))}/s on average`));
        nodes.push(dot);
      });
    }
    nodes.push(svg("line", { class: "baseline", x1: m.left, x2: m.left + plotW, y1: y(0), y2: y(0) }));
    if (!totals.failures && !totals.bytes_received) {
      nodes.push(svg("text", { class: "empty-chart", x: m.left + plotW / 2, y: m.top + plotH / 2,
                               "text-anchor": "middle" }, "Nothing recorded in this period"));
    }
    chart.replaceChildren(...nodes);
    chart.dataset.hours = String(data.hours);
    chart.dataset.failures = String(totals.failures || 0);
    chart.dataset.drawn = "true";

    const period = data.hours === 168 ? "7 days" : `${data.hours} h`;
    $("#history-summary").textContent = `last ${period}: ${totals.failures || 0} failures in `
      + `${totals.attempts || 0} attempts · ${totals.recoveries || 0} recovered · `
      + `${bytes(totals.bytes_received || 0)} received`;
    const legend = codes.map((code, order) => {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = codeColor(code, order);
      return el("span", { class: "legend-item", "data-code": code }, swatch,
        el("span", { text: `${code} ${totals.failures_by_code[code]}` }));
    });
    legend.push(el("span", { class: "legend-item legend-throughput" }, el("span", { class: "swatch line" }),
      el("span", { text: "throughput (average per hour)" })));
    $("#history-legend").replaceChildren(...legend);
  }

  function setHistoryHours(event) {
    const button = event.target.closest("button[data-hours]");
    if (!button) return;
    historyHours = Number(button.dataset.hours);
    for (const b of $$(".history-range button")) b.setAttribute("aria-pressed", String(b === button));
    loadHistory();
  }

  // -- the attempt timeline, in a row under the operation's row

  function timelineKey(op) {
    const t = op.timeline || [];
    const last = t[t.length - 1];
    return `${t.length}:${last ? `${last.number}/${last.ended_at}/${last.bytes_received}` : ""}`;
  }

  function detailRow(id) {
    return $(`#ops-body tr.detail-row[data-detail-for="${CSS.escape(id)}"]`);
  }

  function renderHelp(row, op) {
    const nameCell = $(".name", row);
    let tools = $(".help-tools", nameCell);
    if (!tools) {
      tools = el("div", { class: "help-tools" },
        el("button", { type: "button", class: "link timeline-toggle", "data-help": "timeline",
                       "aria-expanded": "false" }));
      nameCell.append(tools);
    }
    const count = (op.timeline || []).length;
    const toggle = $(".timeline-toggle", tools);
    const open = expanded.has(op.id);
    toggle.textContent = `${open ? "▾" : "▸"} ${count} attempt${count === 1 ? "" : "s"}`;
    toggle.setAttribute("aria-expanded", String(open));
    toggle.disabled = count === 0 && !open;

    const cell = $(".actions", row);
    let helpActions = $(".help-actions", cell);
    const wantsReport = ["failed", "exhausted"].includes(op.status);
    if (wantsReport && !helpActions) {
      helpActions = el("span", { class: "help-actions" },
        el("button", { type: "button", class: "report-button", "data-help": "report",
                       title: "A support report: copy it as text or download it as JSON" }, "Report"));
      cell.append(helpActions);
    } else if (!wantsReport && helpActions) {
      helpActions.remove();
    }

    let detail = detailRow(op.id);
    if (!open) {
      if (detail) detail.remove();
      return;
    }
    const columns = $("#operations thead tr").children.length;
    if (!detail) {
      detail = el("tr", { class: "detail-row", "data-detail-for": op.id },
        el("td", { colspan: String(columns) },
          el("div", { class: "timeline" }), el("div", { class: "report-panel", hidden: true })));
    }
    if (detail.previousElementSibling !== row) row.after(detail);
    const box = $(".timeline", detail);
    const key = timelineKey(op);
    if (box.dataset.key !== key) {
      box.dataset.key = key;
      box.replaceChildren(timelineTable(op));
    }
  }

  function timelineTable(op) {
    const entries = op.timeline || [];
    if (!entries.length) return el("p", { class: "empty", text: "No attempt has started yet." });
    const head = el("tr", {}, ...["#", "Started by", "Waited before", "Started", "Took", "Outcome", "Error",
      "Received", "Connections"].map((h) => el("th", { text: h })));
    const rows = entries.map((t) => {
      const took = t.ended_at ? shortDuration(t.ended_at - t.started_at) : "running";
      const outcome = t.outcome || "running";
      return el("tr", { class: "attempt-row", "data-number": String(t.number), "data-outcome": outcome },
        el("td", { text: String(t.number) }),
        el("td", { text: TRIGGER_LABELS[t.trigger] || t.trigger }),
        el("td", { text: t.delay_s ? shortDuration(t.delay_s) : "–" }),
        el("td", { text: new Date(t.started_at * 1000).toLocaleTimeString() }),
        el("td", { text: took }),
        el("td", {}, el("span", { class: "outcome", "data-outcome": outcome, text: outcome })),
        el("td", { class: "attempt-code", text: t.code || "" }),
        el("td", { text: bytes(t.bytes_received || 0) }),
        el("td", { text: t.connections === null || t.connections === undefined ? "–" : String(t.connections) }));
    });
    return el("table", { class: "attempts" }, el("thead", {}, head), el("tbody", {}, ...rows));
  }

  function toggleTimeline(id) {
    if (expanded.has(id)) expanded.delete(id);
    else expanded.add(id);
    const op = ops.get(id);
    const row = $(`#ops-body tr[data-op-id="${CSS.escape(id)}"]`);
    if (op && row) renderHelp(row, op);
  }

  // -- the support report: copy as text, download as JSON

  async function openReport(id) {
    expanded.add(id);
    const op = ops.get(id);
    const row = $(`#ops-body tr[data-op-id="${CSS.escape(id)}"]`);
    if (!op || !row) return;
    renderHelp(row, op);
    const panel = $(".report-panel", detailRow(id));
    panel.hidden = false;
    panel.dataset.state = "loading";
    panel.replaceChildren(el("p", { class: "muted", text: "Collecting the report and checking the host now…" }));
    const path = `/api/operations/${encodeURIComponent(id)}/report`;
    const [json, text] = await Promise.all([api("GET", path), reportText(path)]);
    if (!json.ok) {
      panel.dataset.state = "error";
      panel.replaceChildren(el("p", { class: "error-message", text: `${json.error.code}: ${json.error.message}` }));
      return;
    }
    const doc = json.data;
    reports.set(id, { doc, text: text ?? JSON.stringify(doc, null, 2) });
    const summary = doc.summary || {};
    const net = doc.network || {};
    let check = "network check not run";
    if (net.checked) {
      check = net.ok ? `${net.host}:${net.port} reachable now (DNS ${net.dns.elapsed_ms} ms, TCP ${net.tcp.elapsed_ms} ms)`
        : `${net.host}:${net.port} not reachable now: ${net.dns.ok ? `TCP ${net.tcp.error}` : `DNS ${net.dns.error}`}`;
    }
    panel.dataset.state = "ready";
    panel.replaceChildren(
      el("div", { class: "report-head" },
        el("strong", { text: "Support report" }),
        el("span", { class: "report-summary",
                     text: `${summary.code || "no error"} · ${summary.retries} retries · ${check}` }),
        el("button", { type: "button", "data-help": "copy-report" }, "Copy as text"),
        el("button", { type: "button", "data-help": "download-report" }, "Download JSON"),
        el("span", { class: "report-result", role: "status" })),
      el("pre", { class: "report-text", text: reports.get(id).text }));
  }

  async function reportText(path) {
    try {
      const response = await fetch(`${path}?format=text`, { credentials: "same-origin" });
      return response.ok ? await response.text() : null;
    } catch (err) {
      return null;
    }
  }

  async function copyReport(id, panel) {
    const report = reports.get(id);
    if (!report) return;
    const result = $(".report-result", panel);
    try {
      await navigator.clipboard.writeText(report.text);
    } catch (err) {  // no clipboard API (or refused): copy from a selected text area
      const area = el("textarea", { class: "offscreen", readonly: true });
      area.value = report.text;
      document.body.append(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      if (!ok) { result.textContent = "Could not copy: select the text below."; return; }
    }
    result.textContent = "Copied.";
  }

  function downloadReport(id) {
    const report = reports.get(id);
    if (!report) return;
    const blob = new Blob([JSON.stringify(report.doc, null, 2) + "\n"], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: `recovery-report-${id}.json`, class: "offscreen" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function onHelpClick(event) {
    const button = event.target.closest("button[data-help]");
    if (!button) return;
    const owner = button.closest("tr[data-op-id], tr[data-detail-for]");
    const id = owner.dataset.opId || owner.dataset.detailFor;
    const what = button.dataset.help;
    if (what === "timeline") toggleTimeline(id);
    else if (what === "report") openReport(id);
    else if (what === "copy-report") copyReport(id, button.closest(".report-panel"));
    else if (what === "download-report") downloadReport(id);
  }

  // A removed operation takes its detail row with it.
  function dropOrphanDetails() {
    for (const detail of $$("#ops-body tr.detail-row")) {
      const id = detail.dataset.detailFor;
      if (!$(`#ops-body tr[data-op-id="${CSS.escape(id)}"]`)) { detail.remove(); expanded.delete(id); }
    }
  }

  function setupHelp() {
    $("#ops-body").addEventListener("click", onHelpClick);
    new MutationObserver(dropOrphanDetails).observe($("#ops-body"), { childList: true });
    $(".history-range").addEventListener("click", setHistoryHours);
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => { if (historyData) drawHistory(historyData); }, 150);
    });
    setInterval(loadHistory, 60000);  // a new hour begins even when nothing happens
  }

  function tick() {
    for (const node of $$(".countdown[data-next-retry-at]")) updateCountdown(node);
    for (const op of ops.values()) {
      const row = $(`#ops-body tr[data-op-id="${CSS.escape(op.id)}"]`);
      if (row && row.dataset.stalled !== String(isStalled(op))) renderOp(op);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#ops-body").addEventListener("click", onAction);
    $("#add-form").addEventListener("submit", addDownload);
    $("#settings-form").addEventListener("submit", saveSettings);
    setInterval(tick, 200);
    setupHelp();
    connect();
  });
})();
