// The zerofn engine's dashboard: one EventSource, the DOM updated in place. Everything from the
// engine is written with textContent, never parsed as HTML.
"use strict";

const EVENTS_KEPT = 500;
const DECISIONS_KEPT = 200;
const CHART_SPAN_MS = 5 * 60 * 1000;

const state = { events: [], decisions: [], deadLetters: [], selected: null, now: Date.now() };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function ms(v) {
  return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
}

// The replica count over the last five minutes as a step line (inline SVG).
function sparkline(history, now) {
  const w = 120, h = 24, svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("role", "img");
  const from = now - CHART_SPAN_MS;
  const max = Math.max(1, ...history.map((p) => p[1]));
  const x = (t) => ((Math.max(t, from) - from) / CHART_SPAN_MS) * (w - 2) + 1;
  const y = (n) => h - 2 - (n / max) * (h - 4);
  const points = [];
  let last = 0;
  for (const [t, n] of history) {
    if (t > from) {
      points.push(`${x(t)},${y(last)}`);
    }
    points.push(`${x(t)},${y(n)}`);
    last = n;
  }
  if (points.length === 0) points.push(`1,${y(0)}`);
  points.push(`${w - 1},${y(last)}`);
  const base = document.createElementNS(svgNs, "line");
  base.setAttribute("x1", 0); base.setAttribute("x2", w);
  base.setAttribute("y1", h - 2); base.setAttribute("y2", h - 2);
  const line = document.createElementNS(svgNs, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(base, line);
  const peak = history.reduce((m, p) => (p[0] > from ? Math.max(m, p[1]) : m), last);
  svg.setAttribute("aria-label", `replicas over the last 5 minutes: now ${last}, peak ${peak}`);
  return svg;
}

function cell(row, field, text, cls) {
  let td = row.querySelector(`[data-field="${field}"]`);
  if (!td) {
    td = el("td", { "data-field": field });
    row.append(td);
  }
  if (cls) td.className = cls;
  if (text instanceof Node) {
    td.replaceChildren(text);
  } else if (td.textContent !== String(text)) {
    td.textContent = text;
  }
  return td;
}

function renderFunctions(functions, now) {
  const body = $("functions").tBodies[0];
  const seen = new Set();
  for (const f of functions) {
    seen.add(f.name);
    let row = body.querySelector(`tr[data-function="${CSS.escape(f.name)}"]`);
    if (!row) {
      row = el("tr", { "data-function": f.name });
      row.append(el("th", { scope: "row", "data-field": "name" }, f.name));
      body.append(row);
    }
    const figures = f.figures || {};
    const lag = Object.entries(f.lag || {}).filter(([, n]) => n > 0).map(([t, n]) => `${t}: ${n}`).join(", ");
    cell(row, "kind", f.kind);
    const replicas = cell(row, "replicas", `${f.replicas} / ${f.desired}`, "num");
    replicas.dataset.replicas = f.replicas;
    replicas.dataset.desired = f.desired;
    cell(row, "reason", f.reason || "–");
    cell(row, "chart", sparkline(figures.history || [], now));
    cell(row, "lag", lag || "0");
    cell(row, "rate", (figures.events_per_second || 0).toFixed(1), "num");
    cell(row, "p50", ms(figures.p50_ms), "num");
    cell(row, "p95", ms(figures.p95_ms), "num");
    cell(row, "retries", f.retries, "num");
    cell(row, "dead_letters", f.dead_letters, "num");
    cell(row, "cold_start", f.last_cold_start_ms === null ? "–" : `${f.last_cold_start_ms} ms`, "num");
    cell(row, "start_error", f.last_start_error || "", f.last_start_error ? "error" : "");
  }
  for (const row of [...body.rows]) {
    if (!seen.has(row.dataset.function)) row.remove();
  }
}

function matches(e, filter) {
  if (!filter) return true;
  return [e.type, e.subject, e.function, e.outcome, e.trace_id, e.id]
    .some((v) => v && String(v).toLowerCase().includes(filter));
}

function renderEvents() {
  const filter = $("event-filter").value.trim().toLowerCase();
  const body = $("events").tBodies[0];
  const rows = [];
  for (let i = state.events.length - 1; i >= 0 && rows.length < 200; i--) {
    const e = state.events[i];
    if (!matches(e, filter)) continue;
    const row = el("tr", { "data-event-id": e.id || "", "data-outcome": e.outcome });
    row.append(
      el("td", {}, time(e.at)),
      el("td", {}, e.function),
      el("td", {}, e.type || "–"),
      el("td", {}, e.subject || "–"),
      el("td", { class: `outcome-${e.outcome}` }, e.outcome.replace("_", " ")),
      el("td", { class: "num" }, ms(e.duration_ms)),
      el("td", { class: "trace" }, e.trace_id || "–"),
    );
    rows.push(row);
  }
  if (rows.length === 0) rows.push(empty(7, filter ? "No event matches the filter." : "No events yet."));
  body.replaceChildren(...rows);
}

function empty(columns, text) {
  const row = el("tr", { class: "empty" });
  row.append(el("td", { colspan: columns }, text));
  return row;
}

function renderDecisions() {
  const list = $("decisions");
  const items = [];
  for (let i = state.decisions.length - 1; i >= 0; i--) {
    const d = state.decisions[i];
    items.push(el("li", { "data-function": d.function, "data-to": d.to },
      `${time(d.at)} ${d.function}: ${d.from} → ${d.to} (${d.reason || "–"})`));
  }
  if (items.length === 0) items.push(el("li", { class: "empty" }, "No scaling yet."));
  list.replaceChildren(...items);
}

function renderDeadLetters() {
  const body = $("dead-letters").tBodies[0];
  const rows = state.deadLetters.map((d) => {
    const row = el("tr", { "data-dead-letter": d.id, "data-event-id": d.event_id || "" });
    const show = el("button", { type: "button", class: "secondary", "aria-label": `Show dead letter ${d.id} of ${d.function}` }, "Show");
    show.addEventListener("click", () => openDeadLetter(d.id));
    const actions = el("td");
    actions.append(show);
    row.append(
      el("td", {}, d.last_failure ? new Date(d.last_failure).toLocaleTimeString([], { hour12: false }) : "–"),
      el("td", {}, d.function),
      el("td", {}, d.type || "–"),
      el("td", { title: d.message || "" }, d.reason),
      el("td", { class: "num" }, d.attempts),
      actions,
    );
    return row;
  });
  if (rows.length === 0) rows.push(empty(6, "No dead letters."));
  body.replaceChildren(...rows);
}

async function openDeadLetter(id) {
  const panel = $("dead-letter");
  $("replay-result").textContent = "";
  const r = await fetch(`/_zerofn/dashboard/dead-letters/${encodeURIComponent(id)}`);
  const d = await r.json();
  if (!r.ok) {
    $("replay-result").textContent = d.message || `could not load ${id}`;
    return;
  }
  state.selected = d;
  panel.dataset.deadLetter = id;
  $("dead-letter-title").textContent = `Dead letter ${id} (${d.function})`;
  $("dead-letter-reason").textContent = `${d.error.kind}: ${d.error.messages.join(": ")} — ${d.attempts} attempt(s)`;
  $("dead-letter-event").textContent = d.event ? JSON.stringify(d.event, null, 2) : (d.original.body || d.original.body_base64 || "");
  const data = d.event ? d.event.data : null;
  $("dead-letter-data").value = data === undefined || data === null ? "" : JSON.stringify(data, null, 2);
  $("replay").disabled = !d.event;
  panel.hidden = false;
  $("dead-letter-data").focus();
}

async function replay() {
  const d = state.selected;
  if (!d) return;
  const result = $("replay-result");
  let body = {};
  const text = $("dead-letter-data").value.trim();
  if (text) {
    try {
      body = { data: JSON.parse(text) };
    } catch (e) {
      result.textContent = `The data is not JSON: ${e.message}`;
      return;
    }
  }
  $("replay").disabled = true;
  try {
    const r = await fetch(`/_zerofn/dashboard/dead-letters/${encodeURIComponent(d.id)}/replay`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-zerofn-dashboard": "1" },
      body: JSON.stringify(body),
    });
    const answer = await r.json();
    result.dataset.outcome = r.ok ? "replayed" : "failed";
    result.textContent = r.ok
      ? `Replayed ${d.id}${answer.fixed ? " with the fixed data" : ""}: watch it under Recent events.`
      : `Not replayed: ${answer.message}`;
  } finally {
    $("replay").disabled = false;
  }
}

function apply(update) {
  state.now = update.at;
  state.events.push(...update.events);
  if (state.events.length > EVENTS_KEPT) state.events.splice(0, state.events.length - EVENTS_KEPT);
  state.decisions.push(...update.decisions);
  if (state.decisions.length > DECISIONS_KEPT) state.decisions.splice(0, state.decisions.length - DECISIONS_KEPT);
  renderFunctions(update.functions || [], update.at);
  if (update.events.length) renderEvents();
  if (update.decisions.length) renderDecisions();
  if (Array.isArray(update.dead_letters)) {
    const ids = update.dead_letters.map((d) => d.id).join();
    if (ids !== state.deadLetters.map((d) => d.id).join()) {
      state.deadLetters = update.dead_letters;
      renderDeadLetters();
    }
  }
}

function connect() {
  const status = $("connection");
  const source = new EventSource("/_zerofn/dashboard/stream");
  source.addEventListener("open", () => {
    status.dataset.state = "live";
    status.textContent = "Live";
  });
  source.addEventListener("update", (m) => apply(JSON.parse(m.data)));
  source.addEventListener("error", () => {
    status.dataset.state = "lost";
    status.textContent = "Connection lost: retrying…";
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("event-filter").addEventListener("input", renderEvents);
  $("replay").addEventListener("click", replay);
  $("close-dead-letter").addEventListener("click", () => {
    $("dead-letter").hidden = true;
    state.selected = null;
  });
  renderEvents();
  renderDecisions();
  renderDeadLetters();
  connect();
});
