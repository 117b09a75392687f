/* The console's pages: each renders from the API what the signed-in key may read (see PAGES).
   A page object carries its abort signal, its timers, render(), active() and reload(). */

import { api, call, mayChange, readable, session, stream } from "./api.js";
import { hourlyChart, lineChart, short } from "./charts.js";
import { COLORS, badge, bytes, el, errorBox, facts, link, number, panel, plainHeader, put, shareBar, shortId, table, when } from "./dom.js";

const REFRESH_MS = 2000;

const PRIMARY_METRICS = ["accuracy", "r2", "f1_macro", "mae", "rmse"];

/** A change the user confirmed: ``init`` sent to ``path`` through the API; "``label``: done" or
    the server's refusal in ``status``; then ``after()``. (A 401 has signed the page out.) */
async function change(label, path, init, status, after) {
  try {
    await call(path, init);
    status.replaceChildren(`${label}: done at ${new Date().toLocaleTimeString()}.`);
    await after();
  } catch (error) {
    if (error.status !== 401) status.replaceChildren(errorBox(error));
  }
}

/** A button for a change: a POST (or ``method``) to ``path`` once the user confirms ``question``
    (see :func:`change`). */
function action(label, question, path, status, after, method = "POST") {
  const button = el("button", { type: "button", class: "action", text: label });
  button.addEventListener("click", async () => {
    if (!window.confirm(question)) return;
    button.disabled = true;
    await change(label, path, { method, body: method === "POST" ? {} : undefined }, status, after);
    button.disabled = false;
  });
  return button;
}

/** Run ``refresh`` now and every REFRESH_MS while ``page`` is shown; a failure shows in ``status``. */
async function every(page, status, refresh) {
  const run = async () => {
    try {
      await refresh();
      status.replaceChildren(`Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`);
    } catch (error) {
      if (!page.active() || error.name === "AbortError" || error.status === 401) return;
      status.replaceChildren(errorBox(error));
    }
  };
  await run();
  page.timers.push(setInterval(run, REFRESH_MS));
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
  const start = new Date((Math.floor(Date.now() / 3600e3) - 23) * 3600e3).toISOString(); // the chart's first hour
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

// "Counted by 2 servers": how many servers of the cluster the live figures are summed over
function countedBy(d) {
  const servers = d.stats?.servers ?? 0;
  return servers ? `Counted by ${number(servers)} server${servers === 1 ? "" : "s"}` : "Nothing counted yet";
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

/** ``digits:1=90, digits:2=10`` as routes (the primary first; a route without ``=WEIGHT``
    weighs 100), as ``modelyard deploy create`` reads them; throws on what it cannot read. */
function parseRoutes(text) {
  const items = text.split(/[\s,]+/).filter(Boolean);
  if (!items.length) throw new Error("Give at least one route, e.g. digits:1=90, digits:2=10 (the primary first).");
  return items.map((item) => {
    const match = /^([^:=\s]+):(\d+)(?:=(\d+(?:\.\d*)?))?$/.exec(item);
    if (!match) throw new Error(`"${item}" is not MODEL:VERSION or MODEL:VERSION=WEIGHT (e.g. digits:2=10).`);
    return { model: match[1], version: Number(match[2]), weight: match[3] === undefined ? 100 : Number(match[3]) };
  });
}

/** A form that creates a deployment: its name, its routes and, optionally, the limits that roll a
    canary back by itself; the new deployment's page opens once the server made it. */
function deploymentForm(status) {
  const input = (id, attrs) => el("input", { id, ...attrs });
  const name = input("deployment-name", { maxlength: 128, placeholder: "web", required: true });
  const routes = input("deployment-routes", { placeholder: "digits:1=90, digits:2=10", required: true });
  const rate = input("deployment-error-rate", { type: "number", min: "0", max: "100", step: "any", placeholder: "none" });
  const p99 = input("deployment-p99", { type: "number", min: "0", step: "any", placeholder: "none" });
  const field = (node, text) => el("label", { for: node.id }, el("span", { text }), node);
  const form = el("form", { class: "key-form" }, field(name, "Name"), field(routes, "Routes (the primary first)"),
    field(rate, "Roll a canary back above this error rate (%)"), field(p99, "... or above this p99 latency (ms)"),
    el("button", { type: "submit", class: "action", text: "Create deployment" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim() };
    try {
      body.routes = parseRoutes(routes.value);
    } catch (error) {
      put(status, el("div", { class: "error", role: "alert", text: error.message }));
      return;
    }
    if (rate.value || p99.value) {
      body.rollback = {};
      if (rate.value) body.rollback.max_error_rate = Number(rate.value) / 100;
      if (p99.value) body.rollback.max_p99_ms = Number(p99.value);
    }
    await change(`Create deployment ${body.name}`, "/api/v1/deployments", { method: "POST", body }, status, async () => {
      window.location.hash = `#/deployments/${encodeURIComponent(body.name)}`;
    });
  });
  return form;
}

async function deploymentsPage(page) {
  const body = el("div");
  const status = el("p", { class: "muted" });
  const outcome = el("div", { class: "muted" });
  page.render([el("h1", { text: "Deployments" }), mayChange() ? panel("A new deployment", deploymentForm(outcome)) : null,
    outcome, body, status]);
  await every(page, status, async () => {
    const deployments = await api("/api/v1/deployments?page_size=200", page.signal);
    put(body, panel(`${number(deployments.total)} deployments`, table(["Name", "Traffic", "Shadow", "Rollout", "Revision#", "Updated"],
      deployments.items.map((d) => [
        link(`#/deployments/${encodeURIComponent(d.name)}`, d.name), shareBar(routeParts(d.routes)),
        d.shadow ? `${d.shadow.model}:${d.shadow.version} (${number(100 * d.shadow.share, 1)}%)` : "",
        d.rollout ? `step ${d.rollout.step + 1} of ${d.rollout.steps.length} (${number(d.rollout.share, 1)}%)` : "",
        number(d.revision), when(d.updated_at),
      ]), "No deployments yet: the form above, or `modelyard deploy create NAME MODEL:VERSION=WEIGHT ...`, makes one.")));
  });
  return null;
}

/** Requests a second per route, from the counts of successive refreshes (the last 2 minutes). */
export class Rates {
  constructor() {
    this.samples = []; // [seconds since the page opened, {route: requests}, servers counted]
    this.opened = performance.now() / 1000;
  }

  add(counts, servers) {
    this.samples.push([performance.now() / 1000 - this.opened, counts, servers]);
    if (this.samples.length > 2 + 120000 / REFRESH_MS) this.samples.shift();
  }

  /** Per route, [[t, requests/s], ...]: a count that went down (the deployment changed) starts
      afresh, and an interval in which a server joined or left the sum has no rate (the totals
      moved by that server's counts, not by the interval's requests). */
  series(routes) {
    return routes.map((route) => {
      const points = [];
      for (let i = 1; i < this.samples.length; i++) {
        const [t0, before, s0] = this.samples[i - 1], [t1, after, s1] = this.samples[i];
        const delta = (after[route] ?? 0) - (before[route] ?? 0);
        if (delta >= 0 && t1 > t0 && (s0 === s1 || !s0)) points.push([Number(t1.toFixed(1)), delta / (t1 - t0)]);
      }
      return { name: route, points };
    });
  }
}

/** The form that sets a deployment's weights (``PATCH {"weights": {...}}``), one input per
    route, starting at its weight now; the outcome in ``status``; then ``after()``. */
function weightsForm(path, routes, status, after) {
  const inputs = routes.map((r) => el("input", { type: "number", min: "0", step: "any", value: r.weight,
    "data-route": `${r.model}:${r.version}`, "aria-label": `weight of ${r.model}:${r.version}` }));
  const form = el("form", { class: "weights" }, el("span", { class: "muted", text: "Weights:" }),
    routes.map((r, i) => el("label", {}, `${r.model}:${r.version} `, inputs[i])),
    el("button", { type: "submit", class: "action", text: "Apply weights" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const weights = Object.fromEntries(inputs.map((input) => [input.dataset.route, Number(input.value)]));
    const split = Object.entries(weights).map(([route, w]) => `${route} ${w}`).join(", ");
    if (!window.confirm(`Change the weights to ${split}? Requests in flight finish where they are.`)) return;
    await change(`Weights ${split}`, path, { method: "PATCH", body: { weights } }, status, after);
  });
  return form;
}

async function deploymentPage(page, name) {
  const body = el("div");
  const status = el("p", { class: "muted" });
  const actions = el("div", { class: "actions" });
  const weights = el("div");
  let weighed = ""; // the routes and weights the buttons and the weights form were made for
  const outcome = el("div", { class: "muted" });
  const rates = new Rates();
  const path = `/api/v1/deployments/${encodeURIComponent(name)}`;
  page.render([el("h1", {}, "Deployment ", el("code", { text: name })), actions, weights, outcome, body, status]);
  const refresh = async () => {
    const d = await api(path, page.signal);
    const stats = (d.stats && d.stats.routes) || [];
    const label = (r) => `${r.model}:${r.version}`;
    const counts = Object.fromEntries(stats.map((s) => [label(s), s.requests]));
    rates.add(counts, d.stats?.servers ?? 0);
    const series = rates.series(d.routes.map(label));
    const routeRows = d.routes.map((r, i) => {
      const s = stats.find((x) => x.model === r.model && x.version === r.version) || {};
      const window = s.window ? `${number(s.window.errors)} errors of ${number(s.window.requests)} in ${number(s.window.seconds)} s`
        + (s.window.p99_ms != null ? `, p99 ${number(s.window.p99_ms, 2)} ms` : "") : "";
      const now = series[i].points.length ? series[i].points[series[i].points.length - 1][1] : null;
      return [link(`#/models/${encodeURIComponent(r.model)}`, label(r)), number(r.weight),
        number(s.requests), number(now, 1), number(s.errors), number(s.latency_ms_avg, 2), window];
    });
    // routes it had and has no more (a canary rolled back): what they did while they had traffic
    for (const r of (d.stats && d.stats.retired) || []) {
      routeRows.push([`${label(r)} (retired)`, "—", number(r.requests), "—", number(r.errors), number(r.latency_ms_avg, 2), ""]);
    }
    const shadow = d.stats && d.stats.shadow;
    // The buttons and the weights form are made again only when the routes or weights change: a
    // refresh keeps what is being typed, and a button whose call is under way.
    const shape = JSON.stringify(d.routes);
    if (shape !== weighed) {
      weighed = shape;
      const canary = mayChange() && d.routes.length > 1 ? d.routes[d.routes.length - 1] : null;
      put(actions, canary && [
        action(`Roll back to ${label(d.routes[0])}`, `Send all of ${name}'s traffic to its primary, ${label(d.routes[0])}?`,
          `${path}/rollback`, outcome, refresh),
        action(`Promote ${label(canary)}`, `Send all of ${name}'s traffic to ${label(canary)} and drop the other routes?`,
          `${path}/promote`, outcome, refresh),
      ]);
      put(weights, canary && weightsForm(path, d.routes, outcome, refresh));
    }
    put(body, [
      panel("Traffic", shareBar(routeParts(d.routes)),
        table(["Route", "Weight#", "Requests#", "Now (req/s)#", "Errors#", "Mean latency (ms)#", "The rollback window"], routeRows, "No routes."),
        el("p", { class: "muted", text: `${countedBy(d)} of the cluster, since each started routing it or the deployment last changed.` })),
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
        ["Every", `${number(d.rollout.interval_s, 1)} s`],
        ...(d.rollout.min_requests && d.rollout.next_step_at ? [["Waits for", `${number(d.rollout.min_requests)} canary answers without error at this step (${number(d.stats?.rollout?.canary_answered ?? 0)} so far; ${countedBy(d).toLowerCase()})`]] : [])])) : null,
      d.rollback ? panel("Automatic rollback", el("p", { text:
        `Rolls back when the canary's error rate over ${number(d.rollback.window_s)} s passes ${number(100 * d.rollback.max_error_rate, 1)}%`
        + (d.rollback.max_p99_ms != null ? ` or the 99th percentile of its latency passes ${number(d.rollback.max_p99_ms, 1)} ms` : "")
        + (d.rollback.max_p99_ratio != null ? ` or ${number(d.rollback.max_p99_ratio, 2)} times the primary's` : "")
        + `, with at least ${number(d.rollback.min_requests)} requests.` })) : null,
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
      `${path}/cancel`, outcome, async () => cancel.remove()) // the stream shows the rest
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
      if (page.active()) page.reload();
    }
  });
  return null;
}

/** The roles a key made here may have (an admin's page offers admin too). */
const ROLES_GIVEN = ["owner", "developer", "viewer", "inference"];

/** The form that makes a key; the new key's secret, shown once, in ``made``; then ``after()``. */
function keyForm(made, after) {
  const name = el("input", { id: "key-name", maxlength: 128, placeholder: "ci-deploys" });
  const roles = session.role === "admin" ? [...ROLES_GIVEN, "admin"] : ROLES_GIVEN;
  const role = el("select", { id: "key-role" }, roles.map((r) => el("option", { value: r, text: r })));
  const scopes = el("input", { id: "key-scopes", placeholder: "every model; or: digits, web" });
  const days = el("input", { id: "key-days", type: "number", min: "0", step: "any", placeholder: "never" });
  const rate = el("input", { id: "key-rate", type: "number", min: "0", step: "any", placeholder: "no limit" });
  const field = (input, text) => el("label", { for: input.id }, el("span", { text }), input);
  const form = el("form", { class: "key-form" }, field(name, "Name"), field(role, "Role"),
    field(scopes, "Models and deployments it may call"), field(days, "Expires in (days)"),
    field(rate, "Requests a second at most"), el("button", { type: "submit", class: "action", text: "Create key" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { name: name.value.trim(), role: role.value,
      scopes: scopes.value.split(",").map((x) => x.trim()).filter(Boolean) };
    if (days.value) body.expires_in_s = Number(days.value) * 86400;
    if (rate.value) body.rate_limit = Number(rate.value);
    try {
      const key = await (await call("/api/v1/keys", { method: "POST", body })).json();
      put(made, el("div", { class: "secret", role: "status" },
        el("strong", { text: `Key ${key.name || key.prefix} made. Copy it now: it is shown only this once.` }),
        el("code", { id: "new-secret", text: key.secret }),
        el("p", { class: "muted", text: "For the CLI and the SDK: export MODELYARD_API_KEY=<the key>" })));
      form.reset();
      await after();
    } catch (error) {
      if (error.status !== 401) put(made, errorBox(error));
    }
  });
  return form;
}

async function keysPage(page) {
  const list = el("div");
  const status = el("p", { class: "muted" });
  const made = el("div");
  const outcome = el("div", { class: "muted" });
  const refresh = async () => {
    const keys = await api("/api/v1/keys?include_revoked=true", page.signal);
    put(list, panel(`${number(keys.total)} keys (their secrets are never shown again)`,
      table(["Name", "Prefix", "Role", "May call", "Req/s#", "Created", "Expires", "State", ""], keys.items.map((k) => {
        const own = k.id === session.keyId;
        return [k.name || "", el("code", { text: k.prefix }), k.role, k.scopes.length ? k.scopes.join(", ") : "every model",
          number(k.rate_limit, 1), when(k.created_at), k.expires_at ? when(k.expires_at) : "never",
          k.revoked_at ? badge("revoked") : own ? "this page's key" : "active",
          k.revoked_at ? "" : action("Revoke", own ? "Revoke the key this page is signed in with? The page signs out."
            : `Revoke key ${k.name || k.prefix}? Its callers are refused at once.`,
          `/api/v1/keys/${encodeURIComponent(k.id)}`, outcome, refresh, "DELETE")];
      }), "No keys.")));
  };
  page.render([el("h1", { text: "API keys" }), panel("A new key", keyForm(made, refresh), made), outcome, list, status]);
  await every(page, status, refresh);
  return null;
}

async function datasetsPage(page) {
  const [uploaded, builtin] = await Promise.all([api("/api/v1/datasets?page_size=200", page.signal),
    api("/api/v1/datasets/builtin", page.signal)]);
  const open = (reference, text) => link(`#/datasets/${encodeURIComponent(reference)}`, text);
  return [el("h1", { text: "Datasets" }),
    panel(`${number(uploaded.total)} uploaded`, table(["Name", "Format", "Rows#", "Columns#", "Size#", "Uploaded"],
      uploaded.items.map((d) => [open(d.name, d.name), d.format, number(d.n_rows), number(d.columns.length),
        bytes(d.size_bytes), when(d.created_at)]),
      "None uploaded: `modelyard datasets upload NAME FILE` (CSV, Parquet, NPZ or JSONL).")),
    panel("Built in (scikit-learn's)", el("p", {}, builtin.flatMap((ref, i) => [i ? ", " : "", open(ref, ref)])))];
}

async function datasetPage(page, reference) {
  const d = await api(`/api/v1/datasets/${encodeURIComponent(reference)}`, page.signal);
  const columns = d.columns.map((c) => c.name);
  return [el("h1", {}, "Dataset ", el("code", { text: d.reference })),
    panel("About", facts([["Format", d.format], ["Rows", number(d.n_rows)], ["Size", bytes(d.size_bytes)],
      ["SHA-256", el("code", { text: d.sha256 })], ["Uploaded", d.builtin ? "built in" : when(d.created_at)],
      ["Train on it", el("code", { text: `modelyard train --model NAME --dataset ${d.reference} --target ${columns[columns.length - 1] || "COLUMN"} --follow` })]])),
    panel(`Columns (${number(columns.length)})`, table(["Name", "Type", "Shape", "Missing#"],
      d.columns.map((c) => [el("code", { text: c.name }), c.dtype, `[${c.shape.join(", ")}]`, number(c.missing)]), "No columns.")),
    panel(`The first ${number(d.preview.length)} rows`, table(columns.map(plainHeader), d.preview.map((row) =>
      columns.map((c) => (row[c] === null || row[c] === undefined ? "" : typeof row[c] === "object" ? JSON.stringify(row[c]) : String(row[c])))),
    "No rows."))];
}

/** A quota as the page shows it: unlimited when unset. */
function quota(value, show = number) {
  return value === null || value === undefined ? "unlimited" : show(value);
}

/** A form that creates a tenant by name (its quotas: `modelyard tenants update`). */
function tenantForm(status, after) {
  const name = el("input", { id: "tenant-name", maxlength: 64, placeholder: "team-vision", required: true });
  const form = el("form", { class: "key-form" }, el("label", { for: name.id }, el("span", { text: "Name" }), name),
    el("button", { type: "submit", class: "action", text: "Create tenant" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const tenant = name.value.trim();
    await change(`Create tenant ${tenant}`, "/api/v1/tenants", { method: "POST", body: { name: tenant } }, status, async () => {
      form.reset();
      await after();
    });
  });
  return form;
}

const QUOTAS = [["requests_per_second", "Requests a second"], ["requests_per_day", "Requests a day"], ["tokens_per_day", "Tokens a day"], ["stored_bytes", "Storage (bytes)"],
  ["concurrent_jobs", "Concurrent jobs"], ["training_hours_per_month", "Training hours a month"]];

/** A form that changes a tenant's quotas (``PATCH {"quotas": {...}}``): a field left empty keeps
    its quota, a number sets it, "unlimited" lifts it. Returns the form and ``offer(names)``, which
    sets the tenants to choose from (the choice made stays while it is one of them). */
function quotaForm(status, after) {
  const tenant = el("select", { id: "quota-tenant" });
  const inputs = QUOTAS.map(([key, text]) => [key, text, el("input", { id: `quota-${key}`, placeholder: "as it is" })]);
  const form = el("form", { class: "key-form" }, el("label", { for: tenant.id }, el("span", { text: "Tenant" }), tenant),
    inputs.map(([, text, input]) => el("label", { for: input.id }, el("span", { text }), input)),
    el("button", { type: "submit", class: "action", text: "Change quotas" }));
  let offered = "";
  const offer = (names) => {
    if (names.join("\n") === offered) return;
    offered = names.join("\n");
    const chosen = tenant.value;
    tenant.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    if (names.includes(chosen)) tenant.value = chosen;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const quotas = {};
    for (const [key, text, input] of inputs) {
      const value = input.value.trim().toLowerCase();
      if (!value) continue;
      if (value === "unlimited" || value === "none") quotas[key] = null;
      else if (/^\d+(\.\d*)?$/.test(value)) quotas[key] = Number(value);
      else {
        put(status, el("div", { class: "error", role: "alert", text: `${text}: a number, or "unlimited"; not "${input.value}".` }));
        return;
      }
    }
    if (!Object.keys(quotas).length) {
      put(status, el("div", { class: "error", role: "alert", text: "Fill in at least one quota to change." }));
      return;
    }
    const changes = Object.entries(quotas).map(([key, v]) => `${key} ${v === null ? "unlimited" : v}`).join(", ");
    if (!window.confirm(`Set ${tenant.value}'s ${changes}? Its calls are counted against them at once.`)) return;
    await change(`Quotas of ${tenant.value}: ${changes}`, `/api/v1/tenants/${encodeURIComponent(tenant.value)}`,
      { method: "PATCH", body: { quotas } }, status, async () => {
        for (const [, , input] of inputs) input.value = "";
        await after();
      });
  });
  return [form, offer];
}

/** Every tenant (admins only): its state, its quotas and its requests today, with a button that
    disables or enables it. */
async function tenantsPage(page) {
  const list = el("div");
  const status = el("p", { class: "muted" });
  const outcome = el("div", { class: "muted" });
  const [quotas, offer] = quotaForm(outcome, () => refresh());
  const refresh = async () => {
    const today = new Date();
    today.setUTCHours(0, 0, 0, 0);
    const [tenants, usage] = await Promise.all([api("/api/v1/tenants?page_size=200", page.signal),
      api(`/api/v1/usage?start=${encodeURIComponent(today.toISOString())}`, page.signal)]);
    offer(tenants.items.map((t) => t.name));
    const used = {};
    for (const record of usage.items) used[record.tenant] = (used[record.tenant] || 0) + record.requests;
    put(list, panel(`${number(tenants.total)} tenants`,
      table(["Name", "State", "Requests today (UTC)#", "Requests a second#", "Requests a day#", "Tokens a day#", "Storage#", "Concurrent jobs#",
        "Training hours a month#", "Created", ""], tenants.items.map((t) => {
        const q = t.quotas;
        const path = `/api/v1/tenants/${encodeURIComponent(t.name)}`;
        const flip = el("button", { type: "button", class: "action", text: t.disabled ? "Enable" : "Disable" });
        flip.addEventListener("click", async () => {
          const question = t.disabled ? `Enable tenant ${t.name}? Its keys work again.`
            : `Disable tenant ${t.name}? Every call with its keys is refused until it is enabled again.`;
          if (!window.confirm(question)) return;
          flip.disabled = true;
          await change(`${t.disabled ? "Enable" : "Disable"} ${t.name}`, path,
            { method: "PATCH", body: { disabled: !t.disabled } }, outcome, refresh);
          flip.disabled = false;
        });
        const own = t.name === session.tenant;  // disabling it would refuse this page's own key
        return [t.name, t.disabled ? badge("disabled") : own ? "this page's tenant" : "active", number(used[t.name] || 0),
          quota(q.requests_per_second, (r) => number(r, 1)), quota(q.requests_per_day), quota(q.tokens_per_day), quota(q.stored_bytes, bytes), quota(q.concurrent_jobs),
          quota(q.training_hours_per_month, (h) => number(h, 1)), when(t.created_at), own ? "" : flip];
      }), "No tenants.")));
  };
  page.render([el("h1", { text: "Tenants" }), panel("A new tenant", tenantForm(outcome, refresh)),
    panel("Quotas", quotas), outcome, list, status]);
  await every(page, status, refresh);
  return null;
}

/** The audit log, newest first, filtered by method and path prefix (the server filters). */
async function auditPage(page) {
  const method = el("select", { id: "audit-action" }, ["", "GET", "POST", "PATCH", "PUT", "DELETE"].map((m) =>
    el("option", { value: m, text: m || "any method" })));
  const prefix = el("input", { id: "audit-object", placeholder: "any path; or: /api/v1/deployments" });
  const filters = el("form", { class: "filters" }, el("span", { class: "muted", text: "Show:" }), method, prefix);
  const list = el("div");
  const status = el("p", { class: "muted" });
  const refresh = async () => {
    const query = new URLSearchParams({ page_size: "200" });
    if (method.value) query.set("action", method.value);
    if (prefix.value.trim()) query.set("object", prefix.value.trim());
    const entries = await api(`/api/v1/audit?${query}`, page.signal);
    put(list, panel(`${number(entries.total)} entries, newest first (the last 200 shown)`,
      table(["When", "Tenant", "Role", "Key", "Action", "Object", "Result#", "Client"], entries.items.map((e) => [
        when(e.at), e.tenant || "", e.role || "", e.key_id ? el("code", { text: shortId(e.key_id) }) : "",
        e.action, el("code", { text: e.object }), el("span", { class: `badge ${e.result >= 400 ? "failed" : "succeeded"}`, text: String(e.result) }),
        e.client,
      ]), "No entries match.")));
  };
  for (const input of [method, prefix]) input.addEventListener("change", () => refresh().catch((error) => put(status, errorBox(error))));
  filters.addEventListener("submit", (event) => event.preventDefault());
  page.render([el("h1", { text: "Audit log" }), filters, list, status]);
  await every(page, status, refresh);
  return null;
}

export const PAGES = [
  [/^#?\/?$/, overview],
  [/^#\/models$/, modelsPage],
  [/^#\/models\/([^/]+)$/, modelPage],
  [/^#\/deployments$/, deploymentsPage],
  [/^#\/deployments\/([^/]+)$/, deploymentPage],
  [/^#\/jobs$/, jobsPage],
  [/^#\/jobs\/([^/]+)$/, jobPage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/datasets\/([^/]+)$/, datasetPage],
  [/^#\/keys$/, keysPage],
  [/^#\/audit$/, auditPage],
  [/^#\/tenants$/, tenantsPage],
];
