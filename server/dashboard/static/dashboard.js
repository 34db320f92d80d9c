// Companion dashboard: polls /api/v1/admin/stats and draws line charts in SVG.
// No dependencies; loaded by index.html under a strict CSP (no inline code).
"use strict";

const KEEP_SECONDS = 15 * 60;
const KEY_STORAGE = "companion-admin-key";
const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 160, LEFT = 48, RIGHT = 8, TOP = 8, BOTTOM = 18;

const seconds = (v) => (v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`);
const percent = (v) => `${(v * 100).toFixed(0)}%`;
const number = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));

const CHARTS = [
  { title: "Throughput (tokens/s)", format: number, series: [
    ["generated", (p) => p.tokens_per_s], ["prompt", (p) => p.prompt_tokens_per_s]] },
  { title: "Time to first token", format: seconds, series: [
    ["p50", (p) => p.ttft_s[0]], ["p90", (p) => p.ttft_s[1]], ["p99", (p) => p.ttft_s[2]]] },
  { title: "End-to-end latency", format: seconds, series: [
    ["p50", (p) => p.e2e_s[0]], ["p90", (p) => p.e2e_s[1]], ["p99", (p) => p.e2e_s[2]]] },
  { title: "Inter-token latency", format: seconds, series: [
    ["p50", (p) => p.itl_s[0]], ["p90", (p) => p.itl_s[1]], ["p99", (p) => p.itl_s[2]]] },
  { title: "KV cache usage and prefix-cache hit rate", format: percent, max: 1, series: [
    ["KV used", (p) => p.kv_usage], ["prefix hits", (p) => p.prefix_hit_rate]] },
  { title: "Requests and memory jobs", format: number, series: [
    ["running", (p) => p.running], ["waiting", (p) => p.waiting],
    ["jobs queued", (p) => p.queue_depth]] },
  { title: "GPU", format: percent, max: 1, optional: true, series: [
    ["utilization", (p) => p.gpu_utilization], ["memory used", (p) => p.gpu_memory_used]] },
];

let points = [];
let since = null;
let timer = null;

function element(tag, attributes = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (parent) parent.appendChild(node);
  return node;
}

function html(tag, className, parent, text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function buildCharts() {
  const main = document.getElementById("charts");
  for (const chart of CHARTS) {
    const box = html("section", "chart", main);
    html("h2", "", box, chart.title);
    chart.svg = element("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" }, box);
    const legend = html("div", "legend", box);
    chart.readouts = chart.series.map(([name], i) => {
      const item = html("span", "", legend);
      html("span", `swatch c${i}`, item);
      item.appendChild(document.createTextNode(`${name} `));
      return html("b", "", item, "–");
    });
    chart.box = box;
    box.hidden = Boolean(chart.optional);
  }
}

function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * step).find((c) => c >= value);
}

function draw(chart) {
  const svg = chart.svg;
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const values = chart.series.map(([, pick]) => points.map(pick));
  const present = values.flat().filter((v) => v !== null && v !== undefined);
  if (chart.optional) chart.box.hidden = present.length === 0;
  const top = chart.max ?? niceCeiling(Math.max(0, ...present));
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const x = (t) => LEFT + ((t - t0) / Math.max(t1 - t0, 1e-9)) * (W - LEFT - RIGHT);
  const y = (v) => TOP + (1 - v / top) * (H - TOP - BOTTOM);
  for (const fraction of [0, 0.5, 1]) {
    element("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(top * fraction), y2: y(top * fraction) }, svg);
    element("text", { class: "axis", x: LEFT - 4, y: y(top * fraction) + 3, "text-anchor": "end" }, svg)
      .textContent = chart.format(top * fraction);
  }
  if (points.length > 1) {
    const span = Math.round(t1 - t0);
    element("text", { class: "axis", x: LEFT, y: H - 4 }, svg).textContent = `-${span} s`;
    element("text", { class: "axis", x: W - RIGHT, y: H - 4, "text-anchor": "end" }, svg).textContent = "now";
  }
  values.forEach((series, i) => {
    let d = "";
    let pen = "M";
    series.forEach((v, j) => {
      if (v === null || v === undefined) { pen = "M"; return; }
      d += `${pen}${x(points[j].t).toFixed(1)},${y(Math.min(v, top)).toFixed(1)} `;
      pen = "L";
    });
    if (d) element("path", { class: `line c${i}`, d }, svg);
    const last = series.length ? series[series.length - 1] : null;
    chart.readouts[i].textContent = last === null || last === undefined ? "–" : chart.format(last);
  });
}

function setStatus(text, kind) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

function headers() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askForKey(message) {
  clearTimeout(timer);
  setStatus("administrator key needed", "bad");
  document.getElementById("key-form").hidden = false;
  document.getElementById("key-error").textContent = message;
}

function merge(report) {
  // The last point of every report is live (not kept by the server): replace it next time.
  if (points.length && points[points.length - 1].live) points.pop();
  const fresh = report.points;
  if (fresh.length) {
    fresh[fresh.length - 1].live = true;
    if (fresh.length > 1) since = fresh[fresh.length - 2].t;
  }
  points.push(...fresh);
  const oldest = points.length ? points[points.length - 1].t - KEEP_SECONDS : 0;
  points = points.filter((p) => p.t >= oldest);
  const totals = report.totals;
  document.getElementById("totals").textContent =
    `${Math.round(totals.generated_tokens)} tokens generated · ${Math.round(totals.finished_requests)} requests`;
}

async function poll() {
  const url = since === null ? "/api/v1/admin/stats" : `/api/v1/admin/stats?since=${since}`;
  let delay = 2000;
  try {
    const response = await fetch(url, { headers: headers(), cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      askForKey(body.error ? body.error.message : `HTTP ${response.status}`);
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const report = await response.json();
    delay = report.interval_s * 1000;
    merge(report);
    CHARTS.forEach(draw);
    setStatus(`live · ${new Date().toLocaleTimeString()}`, "ok");
  } catch (error) {
    setStatus(`unreachable (${error.message}); retrying`, "bad");
  }
  timer = setTimeout(poll, delay);
}

function start() {
  buildCharts();
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, document.getElementById("key").value.trim());
    document.getElementById("key-form").hidden = true;
    poll();
  });
  poll();
}

document.addEventListener("DOMContentLoaded", start);
