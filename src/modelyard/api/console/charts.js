/* The console's charts, drawn as SVG: lines (training curves, requests a second) and hourly bars. */

import { COLORS, el, number, svg, swatch } from "./dom.js";

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

export function short(value) {
  const size = Math.abs(value);
  if (size >= 1000 || (size > 0 && size < 0.01)) return value.toExponential(1);
  return Number(value.toFixed(size < 1 ? 3 : size < 10 ? 2 : 1)).toString();
}

/** A line chart: series of [x, y] points, each a polyline (data-series: its name). */
export function lineChart(series, { xLabel = "", yLabel = "" } = {}) {
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
export function hourlyChart(items, hours = 24) {
  // The server counts whole UTC hours; each is labelled in local time (05:30 in India).
  const first = (Math.floor(Date.now() / 3600e3) - (hours - 1)) * 3600e3;
  const ok = new Array(hours).fill(0), errors = new Array(hours).fill(0);
  for (const item of items) {
    const slot = Math.floor((new Date(item.hour).getTime() - first) / 3600e3);
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
    const label = `${String(hour.getHours()).padStart(2, "0")}:${String(hour.getMinutes()).padStart(2, "0")}`;
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
