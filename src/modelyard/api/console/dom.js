/* Building the console's page: elements from values (always as text, never as markup), tables,
   panels, badges, the figures' formats. */

import { ApiError } from "./api.js";

export const COLORS = ["#2a62c9", "#d9822b", "#1f8a4c", "#8e44ad", "#c0392b", "#16a2b8"];

const SVG_NS = "http://www.w3.org/2000/svg";

/** An element; attrs set as attributes ("text": its text, "style": an object of CSS properties);
    children as nodes or text. */
export function el(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs = {}, ...children) {
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
export function put(node, ...children) {
  node.replaceChildren();
  return fill(node, {}, children);
}

export function swatch(i) {
  return el("i", { style: { background: COLORS[i % COLORS.length] } });
}

export function panel(title, ...children) {
  return el("section", { class: "panel" }, el("h2", { text: title }), ...children);
}

/** A table; a header ending in "#" is a column of numbers (right-aligned, the "#" not shown).
    A header that comes from the data goes through :func:`plainHeader`. */
export function table(headers, rows, empty) {
  if (!rows.length) return el("p", { class: "muted", text: empty });
  const numeric = headers.map((h) => h.endsWith("#"));
  const head = el("tr", {}, headers.map((h, i) => el("th", { class: numeric[i] ? "num" : null, text: numeric[i] ? h.slice(0, -1) : h })));
  const body = rows.map((cells) => el("tr", {}, cells.map((cell, i) =>
    el("td", { class: numeric[i] ? "num" : null }, cell))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, body));
}

/** A header from the data, shown as it is (a dataset column named "count#" keeps its "#"). */
export const plainHeader = (name) => (name.endsWith("#") ? `${name}#` : name);

export function badge(word) {
  return el("span", { class: `badge ${word}`, text: word });
}

export function link(href, text) {
  return el("a", { href, text });
}

export function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
}

export function errorBox(error) {
  const what = error instanceof ApiError ? `${error.message} (${error.code}, HTTP ${error.status})` : String(error.message || error);
  const next = error instanceof ApiError && error.status === 403
    ? "Your key's role may not read this: ask an owner of the tenant for a developer or owner key."
    : "Reload the page to try again; the REST API at /docs shows the same data.";
  return el("div", { class: "error", role: "alert" }, el("strong", { text: "Could not load this. " }), what, el("br"), next);
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

export const number = (n, digits = 0) => (n === null || n === undefined ? "—" : Number(n).toLocaleString(undefined, { maximumFractionDigits: digits }));

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
  return `${number(n, unit && n < 10 ? 1 : 0)} ${units[unit]}`;
}

export const shortId = (id) => String(id).slice(0, 8);

/** A horizontal bar of shares (each [label, value, color?]) with its legend. */
export function shareBar(parts) {
  const total = parts.reduce((sum, [, value]) => sum + value, 0) || 1;
  const color = (part, i) => part[2] || COLORS[i % COLORS.length];
  const bar = el("div", { class: "bar" }, parts.map((part, i) =>
    el("span", { style: { width: `${(100 * part[1]) / total}%`, background: color(part, i) }, title: part[0] })));
  const legend = el("div", { class: "legend" }, parts.map((part, i) =>
    el("span", {}, el("i", { style: { background: color(part, i) } }), `${part[0]} ${number((100 * part[1]) / total, 1)}%`)));
  return el("div", {}, bar, legend);
}
