"use strict";
/* ModelYard console (docs/console.md): a page over the REST API, with no build step and no
   framework. The API key stays in this tab's sessionStorage and leaves it only as the
   Authorization header of same-origin calls. Every value from the server enters the page as
   text (textContent or a text node), never as markup. */

const KEY_ITEM = "modelyard.key";
const REFRESH_MS = 2000;
const COLORS = ["#2a62c9", "#d9822b", "#1f8a4c", "#8e44ad", "#c0392b", "#16a2b8"];
const PRIMARY_METRICS = ["accuracy", "r2", "f1_macro", "mae", "rmse"];
const SVG_NS = "http://www.w3.org/2000/svg";

const main = document.getElementById("main");

/** The page shown: navigating away aborts its calls and stops its timers. */
let view = null;
/** The signed-in key's role (from /api/v1/whoami). */
const session = { role: null };

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// -- building the page -------------------------------------------------------------------------

/** An element; attrs set as attributes ("text": its text, "style": an object of CSS properties);
    children as nodes or text. */
function el(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "style") Object.assign(node.style, value); // through the CSSOM: the page's CSP allows no inline style
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replace ``node``'s children with ``children`` (as :func:`el` takes them: nulls left out). */
function put(node, ...children) {
  node.replaceChildren();
  return fill(node, {}, children);
}

function swatch(i) {
  return el("i", { style: { background: COLORS[i % COLORS.length] } });
}

function panel(title, ...children) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...children);
}

function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted", text: empty });
  const head = el("tr", {}, headers.map((h) => el("th", { class: h.endsWith("#") ? "num" : null, text: h.replace(/#$/, "") })));
  const body = rows.map((cells) => el("tr", {}, cells.map((cell, i) =>
    el("td", { class: headers[i].endsWith("#") ? "num" : null }, cell))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

function badge(word) {
  return el("span", { class: `badge ${word}`, text: word });
}

function link(href, text) {
  return el("a", { href, text });
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

function errorBox(error) {
  const what = error instanceof ApiError ? `${error.message} (${error.code}, HTTP ${error.status})` : String(error.message || error);
  const next = error instanceof ApiError && error.status === 403
    ? "Your key's role may not read this: ask an owner of the tenant for a developer or owner key."
    : "Reload the page to try again; the REST API at /docs shows the same data.";
  return el("div", { class: "error", role: "alert" }, el("strong", { text: "Could not load this. " }), what, el("br"), next);
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const number = (n, digits = 0) => (n === null || n === undefined ? "—" : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits }));
function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
  return `${number(n, unit && n < 10 ? 1 : 0)} ${units[unit]}`;
}
const shortId = (id) => String(id).slice(0, 8);

/** A horizontal bar of shares (each [label, value, color?]) with its legend. */
function shareBar(parts) {
  const total = parts.reduce((sum, [, value]) => sum + value, 0) || 1;
  const color = (part, i) => part[2] || COLORS[i % COLORS.length];
  const bar = el("div", { class: "bar" }, parts.map((part, i) =>
    el("span", { style: { width: `${(100 * part[1]) / total}%`, background: color(part, i) }, title: part[0] })));
  const legend = el("div", { class: "legend" }, parts.map((part, i) =>
    el("span", {}, el("i", { style: { background: color(part, i) } }), `${part[0]} ${number((100 * part[1]) / total, 1)}%`)));
  return el("div", {}, bar, legend);
}

// -- charts ------------------------------------------------------------------------------------

/** Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]: about ``count``. */
function ticks(low, high, count, integers = false) {
  if (low === high) return [low];
  const rough = (high - low) / Math.max(1, count - 1);
  const power = 10 ** Math.floor(Math.log10(rough));
  let step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) || 10 * power;
  if (integers) step = Math.max(1, Math.round(step));
  const out = [];
  for (let t = Math.ceil(low / step - 1e-9) * step; t <= high + step * 1e-9; t += step) out.push(Number(t.toPrecision(12)));
  return out;
}

/** [low, high] widened to round ticks, and those ticks. */
function roundRange(low, high, count, integers = false) {
  const first = ticks(low, high, count, integers);
  if (first.length < 2) return [low, high, first];
  const step = first[1] - first[0];
  const [a, b] = [Math.floor(low / step + 1e-9) * step, Math.ceil(high / step - 1e-9) * step];
  return [a, b, ticks(a, b, count, integers)];
}

function short(value) {
  const size = Math.abs(value);
  if (size >= 1000 || (size > 0 && size < 0.01)) return value.toExponential(1);
  return Number(value.toFixed(size < 1 ? 3 : size < 10 ? 2 : 1)).toString();
}

/** A line chart: series of [x, y] points, each a polyline (data-series: its name). */
function lineChart(series, { xLabel = "", yLabel = "" } = {}) {
  const width = 640, height = 240, left = 56, right = 12, top = 12, bottom = 36;
  const points = series.flatMap((s) => s.points);
  const figure = el("figure", { class: "chart" });
  if (!points.length) return el("p", { class: "muted", text: "No points yet." });
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  let yTicks;
  [y0, y1, yTicks] = roundRange(y0, y1, 5);
  const px = (x) => left + ((x - x0) / (x1 - x0)) * (width - left - right);
  const py = (y) => top + (1 - (y - y0) / (y1 - y0)) * (height - top - bottom);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": yLabel || "chart" });
  for (const y of yTicks) {
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: py(y), y2: py(y) }),
      svg("text", { x: left - 6, y: py(y) + 4, "text-anchor": "end", text: short(y) }));
  }
  const wholeX = xs.every(Number.isInteger);
  for (const x of ticks(x0, x1, 6, wholeX)) {
    chart.append(svg("text", { x: px(x), y: height - bottom + 16, "text-anchor": "middle", text: short(x) }));
  }
  if (xLabel) chart.append(svg("text", { x: (left + width - right) / 2, y: height - 4, "text-anchor": "middle", text: xLabel }));
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const color = COLORS[i % COLORS.length];
    chart.append(svg("polyline", {
      points: s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" "),
      fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name,
    }));
    if (s.points.length <= 60) {
      for (const [x, y] of s.points) {
        chart.append(svg("circle", { cx: px(x), cy: py(y), r: 2.5, fill: color }, svg("title", { text: `${s.name}: ${short(y)} at ${short(x)}` })));
      }
    }
  });
  figure.append(chart, el("div", { class: "legend" }, series.map((s, i) =>
    el("span", {}, swatch(i), s.name))));
  return figure;
}

/** Requests per hour, the errors stacked on top, for the last ``hours`` hours. */
function hourlyChart(items, hours = 24) {
  const now = new Date();
  now.setMinutes(0, 0, 0);
  const first = now.getTime() - (hours - 1) * 3600e3;
  const ok = new Array(hours).fill(0), errors = new Array(hours).fill(0);
  for (const item of items) {
    const slot = Math.round((new Date(item.hour).getTime() - first) / 3600e3);
    if (slot < 0 || slot >= hours) continue;
    errors[slot] += item.errors;
    ok[slot] += Math.max(0, item.requests - item.errors);
  }
  const width = 640, height = 200, left = 56, right = 12, top = 12, bottom = 30;
  const [, peak, yTicks] = roundRange(0, Math.max(1, ...ok.map((n, i) => n + errors[i])), 5, true);
  const slotWidth = (width - left - right) / hours;
  const py = (n) => top + (1 - n / peak) * (height - top - bottom);
  const chart = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "requests per hour" });
  for (const n of yTicks) {
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: py(n), y2: py(n) }),
      svg("text", { x: left - 6, y: py(n) + 4, "text-anchor": "end", text: short(n) }));
  }
  for (let i = 0; i < hours; i++) {
    const hour = new Date(first + i * 3600e3);
    const label = `${String(hour.getHours()).padStart(2, "0")}:00`;
    const x = left + i * slotWidth + 1;
    const tip = svg("title", { text: `${label}: ${number(ok[i] + errors[i])} requests, ${number(errors[i])} errors` });
    chart.append(svg("rect", { x, y: py(ok[i]), width: slotWidth - 2, height: py(0) - py(ok[i]), fill: COLORS[0], "data-hour": label, "data-requests": ok[i] + errors[i] }, tip));
    if (errors[i]) {
      chart.append(svg("rect", { x, y: py(ok[i] + errors[i]), width: slotWidth - 2, height: py(ok[i]) - py(ok[i] + errors[i]), fill: COLORS[4] }));
    }
    if (i % 6 === 0 || i === hours - 1) chart.append(svg("text", { x: x + slotWidth / 2, y: height - bottom + 16, "text-anchor": "middle", text: label }));
  }
  return el("figure", { class: "chart" }, chart, el("div", { class: "legend" },
    el("span", {}, swatch(0), "answered"),
    el("span", {}, swatch(4), "errors")));
}

// -- talking to the server ---------------------------------------------------------------------

async function failure(response) {
  let code = `http_${response.status}`, message = response.statusText || "the request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, code, message);
}

async function call(path, { signal, accept = "application/json", method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM)}`, Accept: accept };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.ok) return response;
  const error = await failure(response);
  if (response.status === 401) signOut(`The server no longer accepts this key: ${error.message}`);
  throw error;
}

async function api(path, signal) {
  return (await call(path, { signal })).json();
}

/** A change: POST ``body`` to ``path`` once the user confirms ``question``; its outcome (or
    why it was refused) in ``status``; then ``after()``. */
function action(label, question, path, status, after) {
  const button = el("button", { type: "button", class: "action", text: label });
  button.addEventListener("click", async () => {
    if (!window.confirm(question)) return;
    button.disabled = true;
    try {
      await call(path, { method: "POST", body: {} });
      status.replaceChildren(`${label}: done at ${new Date().toLocaleTimeString()}.`);
      await after();
    } catch (error) {
      if (error.status !== 401) status.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** Whether the signed-in key's role may make changes (what the server enforces; this only hides
    buttons that would be refused). */
function mayChange() {
  return ["admin", "owner", "developer"].includes(session.role);
}

/** Server-sent events from ``path`` (fetch, so the key travels as a header), to ``onEvent``. */
async function stream(path, signal, onEvent) {
  const response = await call(path, { signal, accept: "text/event-stream" });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment (keep-alive)
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") kind = text;
        else if (field === "data") data += (data ? "\n" : "") + text;
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}

/** Run ``refresh`` now and every REFRESH_MS while ``page`` is shown; a failure shows in ``status``. */
async function every(page, status, refresh) {
  const run = async () => {
    try {
      await refresh();
      status.replaceChildren(`Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`);
    } catch (error) {
      if (page !== view || error.name === "AbortError" || error.status === 401) return;
      status.replaceChildren(errorBox(error));
    }
  };
  await run();
  page.timers.push(setInterval(run, REFRESH_MS));
}

// -- pages -------------------------------------------------------------------------------------

/** ``promise``'s value, or the refusal a key's role may meet (403) so that the rest of a page
    still shows; anything else is thrown. */
async function readable(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    if (error.status === 403) return { error };
    throw error;
  }
}

async function overview(page) {
  const [models, deployments, running, loaded] = await Promise.all([
    "/api/v1/models?page_size=1", "/api/v1/deployments?page_size=1", "/api/v1/jobs?state=running&page_size=1", "/api/v1/loaded",
  ].map((path) => readable(api(path, page.signal))));
  const card = (read, count, label, href) => el("a", { class: "card", href, title: read.error ? read.error.message : null },
    el("div", { class: "value", text: read.value ? number(count(read.value)) : "—" }),
    el("div", { class: "label", text: read.error ? `${label} (not for this key's role)` : label }));
  const total = (listing) => listing.total;
  const memory = loaded.error ? panel("In memory", errorBox(loaded.error)) : panel("In memory",
    shareBar([["in use", loaded.value.in_use_bytes, COLORS[0]], ["free", Math.max(0, loaded.value.budget_bytes - loaded.value.in_use_bytes), "#d9dee7"]]),
    el("p", { class: "muted", text: `${bytes(loaded.value.in_use_bytes)} of the ${bytes(loaded.value.budget_bytes)} budget (all tenants).` }),
    table(["Model", "Version#", "Memory#", "In flight#", "Queued#", "Idle (s)#", "Pinned"], loaded.value.items.map((v) => [
      link(`#/models/${encodeURIComponent(v.model)}`, v.model), number(v.version), bytes(v.memory_bytes),
      number(v.in_flight), number(v.queue_depth), number(v.idle_s, 1), v.pinned ? "yes" : "",
    ]), "No version of yours is loaded: the first request to a model loads it."));
  const usage = panel("Requests per hour, last 24 hours", await usagePart(page, ""));
  return [el("h1", { text: "Overview" }), el("div", { class: "cards" },
    card(models, total, "models", "#/models"), card(deployments, total, "deployments", "#/deployments"),
    card(running, total, "jobs running", "#/jobs"), card(loaded, (l) => l.items.length, "versions in memory", "#/")),
  usage, memory];
}

/** The hourly chart and totals of the last day's usage (of one model when ``model``). */
async function usagePart(page, model) {
  const start = new Date(Date.now() - 24 * 3600e3).toISOString();
  const query = `start=${encodeURIComponent(start)}${model ? `&model=${encodeURIComponent(model)}` : ""}`;
  const usage = await readable(api(`/api/v1/usage?${query}`, page.signal));
  if (usage.error) return errorBox(usage.error); // an inference key may not read usage
  const t = usage.value.totals;
  return [hourlyChart(usage.value.items), el("p", { class: "muted",
    text: `${number(t.requests)} requests, ${number(t.errors)} errors, ${number(t.compute_s, 2)} compute-seconds, cost ${number(t.cost, 4)}.` })];
}

async function modelsPage(page) {
  const models = await api("/api/v1/models?page_size=200", page.signal);
  return [el("h1", { text: "Models" }), panel(`${number(models.total)} models`,
    table(["Name", "Description", "Latest#", "Production#", "Updated"], models.items.map((m) => [
      link(`#/models/${encodeURIComponent(m.name)}`, m.name), m.description, number(m.latest_version),
      number(m.production_version), when(m.updated_at),
    ]), "No models yet: push one with `modelyard models push` or train one (`modelyard train`)."))];
}

function metricsText(metrics) {
  return Object.entries(metrics || {}).filter(([, v]) => typeof v === "number")
    .slice(0, 4).map(([k, v]) => `${k} ${short(v)}`).join(", ");
}

/** Where a version came from: an upload, a training or optimization job (linked), a proxy. */
function lineageCell(lineage) {
  if (!lineage) return "";
  const cell = el("span", {}, lineage.source || "");
  if (lineage.optimized_from) cell.append(` of v${lineage.optimized_from.version} (${lineage.method})`);
  if (lineage.job_id) cell.append(" · ", link(`#/jobs/${encodeURIComponent(lineage.job_id)}`, `job ${shortId(lineage.job_id)}`));
  return cell;
}

function signature(version) {
  const rows = [...version.inputs.map((t) => ["input", t]), ...version.outputs.map((t) => ["output", t])];
  return table(["", "Name", "Type", "Shape"], rows.map(([side, t]) => [side, el("code", { text: t.name }), t.datatype, `[${t.shape.join(", ")}]`]), "No signature.");
}

async function modelPage(page, name) {
  const path = `/api/v1/models/${encodeURIComponent(name)}`;
  const [model, versions] = await Promise.all([api(path, page.signal), api(`${path}/versions?page_size=100`, page.signal)]);
  const served = versions.items.find((v) => v.version === model.production_version) || versions.items[0];
  const origin = window.location.origin;
  return [
    el("h1", {}, "Model ", el("code", { text: model.name })),
    panel("About", facts([["Description", model.description], ["Production version", number(model.production_version)],
      ["Latest version", number(model.latest_version)], ["Created", when(model.created_at)],
      ["Call it", el("code", { class: "mono", text: `curl -H "Authorization: Bearer $KEY" ${origin}/v2/models/${model.name}/infer -d @request.json` })]])),
    panel(`Versions (${number(versions.total)})`, table(["Version#", "Stage", "Format", "Size#", "Metrics", "Lineage", "Created"],
      versions.items.map((v) => [number(v.version), badge(v.stage), v.format, bytes(v.size_bytes), metricsText(v.metrics),
        lineageCell(v.lineage), when(v.created_at)]), "No versions.")),
    served ? panel(`Signature of version ${served.version}`, signature(served)) : null,
    panel("Requests per hour, last 24 hours", await usagePart(page, model.name)),
  ];
}

function routeParts(routes) {
  return routes.map((r) => [`${r.model}:${r.version}`, r.weight]);
}

/** A page of one panel, refreshed: ``build`` makes it from what ``path`` answers. */
async function listPage(page, title, path, build) {
  const body = el("div");
  const status = el("p", { class: "muted" });
  page.render([el("h1", { text: title }), body, status]);
  await every(page, status, async () => put(body, build(await api(path, page.signal))));
  return null;
}

function deploymentsPage(page) {
  return listPage(page, "Deployments", "/api/v1/deployments?page_size=200", (deployments) => panel(`${number(deployments.total)} deployments`, table(["Name", "Traffic", "Shadow", "Rollout", "Revision#", "Updated"],
      deployments.items.map((d) => [
        link(`#/deployments/${encodeURIComponent(d.name)}`, d.name), shareBar(routeParts(d.routes)),
        d.shadow ? `${d.shadow.model}:${d.shadow.version} (${number(100 * d.shadow.share, 1)}%)` : "",
        d.rollout ? `step ${d.rollout.step + 1} of ${d.rollout.steps.length} (${number(d.rollout.share, 1)}%)` : "",
        number(d.revision), when(d.updated_at),
      ]), "No deployments: `modelyard deploy create NAME MODEL:VERSION=WEIGHT ...` makes one.")));
}

/** Requests a second per route, from the counts of successive refreshes (the last 2 minutes). */
class Rates {
  constructor() {
    this.samples = []; // [seconds since the page opened, {route: requests}]
    this.opened = performance.now() / 1000;
  }

  add(counts) {
    this.samples.push([performance.now() / 1000 - this.opened, counts]);
    if (this.samples.length > 2 + 120000 / REFRESH_MS) this.samples.shift();
  }

  /** Per route, [[t, requests/s], ...]: a count that went down (the deployment changed) starts afresh. */
  series(routes) {
    return routes.map((route) => {
      const points = [];
      for (let i = 1; i < this.samples.length; i++) {
        const [t0, before] = this.samples[i - 1], [t1, after] = this.samples[i];
        const delta = (after[route] ?? 0) - (before[route] ?? 0);
        if (delta >= 0 && t1 > t0) points.push([Number(t1.toFixed(1)), delta / (t1 - t0)]);
      }
      return { name: route, points };
    });
  }
}

async function deploymentPage(page, name) {
  const body = el("div");
  const status = el("p", { class: "muted" });
  const actions = el("div", { class: "actions" });
  const outcome = el("div", { class: "muted" });
  const rates = new Rates();
  const path = `/api/v1/deployments/${encodeURIComponent(name)}`;
  page.render([el("h1", {}, "Deployment ", el("code", { text: name })), actions, outcome, body, status]);
  const refresh = async () => {
    const d = await api(path, page.signal);
    const stats = (d.stats && d.stats.routes) || [];
    const label = (r) => `${r.model}:${r.version}`;
    const counts = Object.fromEntries(stats.map((s) => [label(s), s.requests]));
    rates.add(counts);
    const series = rates.series(d.routes.map(label));
    const routeRows = d.routes.map((r, i) => {
      const s = stats.find((x) => x.model === r.model && x.version === r.version) || {};
      const window = s.window ? `${number(s.window.errors)} of ${number(s.window.requests)} in ${number(s.window.seconds)} s` : "";
      const now = series[i].points.length ? series[i].points[series[i].points.length - 1][1] : null;
      return [link(`#/models/${encodeURIComponent(r.model)}`, label(r)), number(r.weight),
        number(s.requests), number(now, 1), number(s.errors), number(s.latency_ms_avg, 2), window];
    });
    const shadow = d.stats && d.stats.shadow;
    const canary = d.routes.length > 1 ? d.routes[d.routes.length - 1] : null;
    actions.replaceChildren(...(mayChange() && canary ? [
      action(`Roll back to ${label(d.routes[0])}`, `Send all of ${name}'s traffic to its primary, ${label(d.routes[0])}?`,
        `${path}/rollback`, outcome, refresh),
      action(`Promote ${label(canary)}`, `Send all of ${name}'s traffic to ${label(canary)} and drop the other routes?`,
        `${path}/promote`, outcome, refresh),
    ] : []));
    put(body, [
      panel("Traffic", shareBar(routeParts(d.routes)),
        table(["Route", "Weight#", "Requests#", "Now (req/s)#", "Errors#", "Mean latency (ms)#", "Errors in the rollback window"], routeRows, "No routes."),
        el("p", { class: "muted", text: "Counted by this server since it started or the deployment last changed." })),
      panel("Requests a second, since this page opened", series.some((x) => x.points.length)
        ? lineChart(series, { xLabel: "seconds", yLabel: "requests a second" })
        : el("p", { class: "muted", text: `The rates appear at the next refresh (every ${REFRESH_MS / 1000} s).` })),
      d.shadow ? panel("Shadow", facts([["Version", `${d.shadow.model}:${d.shadow.version}`], ["Share mirrored", `${number(100 * d.shadow.share, 1)}%`],
        ["Compared", shadow ? number(shadow.agreements + shadow.disagreements) : "none yet"],
        ["Agreement", shadow && shadow.agreement_rate !== null ? `${number(100 * shadow.agreement_rate, 2)}%` : "—"],
        ["Mean latency, shadow / primary", shadow && shadow.shadow_latency_ms_avg !== null ? `${number(shadow.shadow_latency_ms_avg, 2)} / ${number(shadow.primary_latency_ms_avg, 2)} ms` : "—"],
        ["Shadow errors", shadow ? number(shadow.errors) : "—"]])) : null,
      d.rollout ? panel("Rollout", facts([["Steps", d.rollout.steps.map((s) => `${s}%`).join(" → ")],
        ["Now", `step ${d.rollout.step + 1} of ${d.rollout.steps.length}: the canary gets ${number(d.rollout.share, 1)}%`],
        ["Next step", d.rollout.next_step_at ? when(d.rollout.next_step_at) : "none (the last)"],
        ["Every", `${number(d.rollout.interval_s, 1)} s`]])) : null,
      d.rollback ? panel("Automatic rollback", el("p", { text:
        `Rolls back when the canary's error rate over ${number(d.rollback.window_s)} s passes ${number(100 * d.rollback.max_error_rate, 1)}% with at least ${number(d.rollback.min_requests)} requests.` })) : null,
      panel("Events, newest first", table(["When", "Event", "Details"], [...d.events].reverse().slice(0, 50).map((e) => {
        const { at, kind, ...rest } = e;
        return [when(at), kind, el("code", { text: JSON.stringify(rest) })];
      }), "No events.")),
    ]);
  };
  await every(page, status, refresh);
  return null;
}

function progressText(job) {
  const p = job.progress;
  if (!p) return "";
  if (p.epoch !== undefined && p.epochs) return `epoch ${p.epoch} of ${p.epochs}`;
  if (p.fraction !== undefined) return `${number(100 * p.fraction)}%`;
  return "";
}

function jobsPage(page) {
  return listPage(page, "Jobs", "/api/v1/jobs?page_size=100", (jobs) => panel(`${number(jobs.total)} jobs, newest first`, table(["Job", "Type", "State", "Progress", "Model", "Created"],
      jobs.items.map((j) => [link(`#/jobs/${encodeURIComponent(j.id)}`, shortId(j.id)), j.type, badge(j.state), progressText(j),
        (j.params && j.params.model_name) || "", when(j.created_at)]),
      "No jobs yet: `modelyard train --model NAME --dataset builtin:digits --follow` starts one.")));
}

/** A training curve's point from a progress event or from a finished run's curves. */
function curvePoint(raw) {
  const metrics = raw.metrics ? raw.metrics : raw;
  return { epoch: raw.epoch, train: raw.train_loss, val: raw.val_loss, metrics };
}

function curvesPart(points) {
  if (!points.length) return el("p", { class: "muted", text: "The curves appear with the first epoch." });
  const loss = [{ name: "train loss", points: points.filter((p) => typeof p.train === "number").map((p) => [p.epoch, p.train]) },
    { name: "validation loss", points: points.filter((p) => typeof p.val === "number").map((p) => [p.epoch, p.val]) }];
  const metric = PRIMARY_METRICS.find((m) => points.some((p) => typeof p.metrics[m] === "number"));
  return el("div", {}, lineChart(loss.filter((s) => s.points.length), { xLabel: "epoch", yLabel: "loss" }),
    metric ? lineChart([{ name: `validation ${metric}`, points: points.filter((p) => typeof p.metrics[metric] === "number").map((p) => [p.epoch, p.metrics[metric]]) }],
      { xLabel: "epoch", yLabel: metric }) : null);
}

async function jobPage(page, id) {
  const path = `/api/v1/jobs/${encodeURIComponent(id)}`;
  const [job, logs] = await Promise.all([api(path, page.signal), api(`${path}/logs?limit=200`, page.signal)]);
  const done = ["succeeded", "failed", "cancelled"].includes(job.state);
  const points = done ? ((job.result && job.result.curves) || []).map(curvePoint) : [];
  const state = el("span", {}, badge(job.state));
  const progress = el("span", { text: progressText(job) });
  const curves = el("div", {}, curvesPart(points));
  const logText = el("pre", { class: "logs", text: logs.items.map((l) => `${l.level} ${l.message}`).join("\n") || "(no log lines yet)" });
  const result = job.result || {};
  const outcome = el("div", { class: "muted" });
  const cancel = !done && mayChange() && !job.cancel_requested
    ? action("Cancel the job", `Cancel ${job.type} job ${shortId(job.id)}? A running one stops within an epoch.`,
      `${path}/cancel`, outcome, async () => {})
    : null;
  page.render([
    el("h1", {}, `${job.type} job `, el("code", { text: shortId(job.id) })),
    el("div", { class: "actions" }, cancel), outcome,
    job.error ? el("div", { class: "error", role: "alert" }, el("strong", { text: `${job.error.code || "error"}: ` }), job.error.message || "") : null,
    panel("About", facts([["State", state], ["Progress", progress], ["Model", job.params.model_name || ""],
      ["Result", result.model_name ? link(`#/models/${encodeURIComponent(result.model_name)}`, `${result.model_name} version ${result.version}`) : ""],
      ["Metrics", metricsText(result.metrics)], ["Created", when(job.created_at)], ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)], ["Attempts", number(job.attempts)]])),
    job.type === "train" ? panel("Training curves", curves) : null,
    panel("Log", logText),
  ]);
  if (done) return null;
  // Live: every event from the first (the curve so far), then as they come; at the end, the page again.
  const seen = [];
  await stream(`${path}/events?after=0`, page.signal, (kind, data) => {
    if (kind === "progress") {
      if (typeof data.train_loss === "number") {
        seen.push(curvePoint(data));
        curves.replaceChildren(curvesPart(seen));
      }
      progress.replaceChildren(progressText({ progress: data }));
    } else if (kind === "state") {
      state.replaceChildren(badge(data.state));
    } else if (kind === "log") {
      logText.append(`\n${data.level || ""} ${data.message || ""}`);
    } else if (kind === "end") {
      if (page === view) show();
    }
  });
  return null;
}

// -- signing in and routing --------------------------------------------------------------------

function signIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", { id: "key", type: "password", autocomplete: "off", required: true, placeholder: "my_..." });
  const note = el("div");
  if (message) note.append(el("div", { class: "error", role: "alert", text: message }));
  const form = el("form", { class: "sign-in" }, el("h1", { text: "Sign in" }), note,
    el("label", { for: "key", text: "API key" }), input,
    el("p", { text: "Any key of yours works; what you see is what its role may read. The key stays in this browser tab (session storage) until you sign out or close it." }),
    el("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    try {
      await whoami();
      show();
    } catch (error) {
      sessionStorage.removeItem(KEY_ITEM);
      note.replaceChildren(el("div", { class: "error", role: "alert", text: `That key was refused: ${error.message}` }));
    }
  });
  main.replaceChildren(form);
  input.focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  session.role = null;
  stop();
  view = null;
  signIn(message);
}

async function whoami() {
  const response = await fetch("/api/v1/whoami", { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM)}` }, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  const me = await response.json();
  session.role = me.role;
  document.getElementById("who").textContent = `${me.tenant} · ${me.role} · ModelYard ${me.server_version}`;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  return me;
}

const PAGES = [
  [/^#?\/?$/, overview],
  [/^#\/models$/, modelsPage],
  [/^#\/models\/([^/]+)$/, modelPage],
  [/^#\/deployments$/, deploymentsPage],
  [/^#\/deployments\/([^/]+)$/, deploymentPage],
  [/^#\/jobs$/, jobsPage],
  [/^#\/jobs\/([^/]+)$/, jobPage],
];

function stop() {
  if (!view) return;
  view.controller.abort();
  view.timers.forEach(clearInterval);
}

async function show() {
  stop();
  if (!sessionStorage.getItem(KEY_ITEM)) {
    view = null;
    signIn();
    return;
  }
  const hash = window.location.hash || "#/";
  const controller = new AbortController();
  const page = { controller, signal: controller.signal, timers: [] };
  page.render = (nodes) => { if (page === view) main.replaceChildren(...nodes.flat().filter(Boolean)); };
  view = page;
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.getAttribute("href");
    a.classList.toggle("current", target === "#/" ? hash === "#/" : hash.startsWith(target));
  }
  const match = PAGES.map(([pattern, render]) => [pattern.exec(hash), render]).find(([m]) => m);
  if (!match) {
    page.render([el("h1", { text: "Not found" }), el("p", {}, "No page here. ", link("#/", "Back to the overview"), ".")]);
    return;
  }
  const [found, render] = match;
  main.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  try {
    if (!document.getElementById("who").textContent) await whoami();
    const nodes = await render(page, ...found.slice(1).map(decodeURIComponent));
    if (nodes) page.render(nodes);
  } catch (error) {
    if (page !== view || error.name === "AbortError") return;
    if (error.status === 401) signOut(`The server no longer accepts this key: ${error.message}`);
    else page.render([errorBox(error)]);
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", show);
show();
