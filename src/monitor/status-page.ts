/**
 * The status page served at `/`: one self-contained HTML document (inline CSS and JS, no external
 * assets) that fetches `stats` every few seconds and renders it. Data is only ever set as text.
 * Opened as `/?token=T` (MONITOR_TOKEN), it sends T to `stats` as a bearer token.
 */
export const STATUS_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Root peer</title>
<style>
  :root { --fg: #1d2330; --muted: #667085; --line: #e4e7ec; --bg: #f6f7f9; --card: #fff; --accent: #2563eb; --ok: #15803d; --bad: #b42318; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
  main { max-width: 960px; margin: 0 auto; padding: 24px 20px 40px; }
  header { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; margin-bottom: 20px; }
  h1 { font-size: 20px; margin: 0; }
  h2 { font-size: 14px; margin: 0 0 12px; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: .04em; }
  .key { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); font-size: 12px; }
  .badge { margin-left: auto; padding: 3px 10px; border-radius: 999px; font-weight: 600; font-size: 12px; background: var(--line); }
  .badge.ok { background: #dcfce7; color: var(--ok); }
  .badge.bad { background: #fee4e2; color: var(--bad); }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; margin-bottom: 12px; }
  .card, section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
  section { margin-bottom: 12px; }
  .label { color: var(--muted); font-size: 12px; }
  .value { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; }
  .sub { color: var(--muted); font-size: 12px; min-height: 1.2em; }
  svg { width: 100%; height: auto; display: block; }
  .axis { fill: var(--muted); font-size: 10px; }
  .grid { stroke: var(--line); stroke-width: 1; }
  .chart-head { display: flex; justify-content: space-between; align-items: baseline; }
  .chart-head span { color: var(--muted); font-size: 12px; margin-left: 12px; }
  table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); }
  th { color: var(--muted); font-weight: 600; font-size: 12px; }
  td.num, th.num { text-align: right; }
  td.name { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px; }
  .empty { color: var(--muted); }
  footer { color: var(--muted); font-size: 12px; }
  #error { color: var(--bad); font-weight: 600; }
</style>
</head>
<body>
<main>
  <header>
    <h1>Root peer</h1>
    <span class="key" id="public-key"></span>
    <span class="badge" id="health">loading…</span>
  </header>
  <div class="cards">
    <div class="card"><div class="label">Peers</div><div class="value" id="peers">–</div><div class="sub">connected now</div></div>
    <div class="card"><div class="label">Rooms</div><div class="value" id="rooms">–</div><div class="sub" id="rooms-open"></div></div>
    <div class="card"><div class="label">Messages</div><div class="value" id="messages">–</div><div class="sub" id="bytes"></div></div>
    <div class="card"><div class="label">Uptime</div><div class="value" id="uptime">–</div><div class="sub" id="started"></div></div>
  </div>
  <section>
    <div class="chart-head">
      <h2 id="chart-title">Messages per second</h2>
      <div><span id="rate-now"></span><span id="rate-peak"></span></div>
    </div>
    <svg id="chart" viewBox="0 0 640 170" role="img" aria-label="messages per second"></svg>
  </section>
  <section>
    <h2>Busiest rooms</h2>
    <table>
      <thead><tr><th>Room</th><th class="num">Messages</th><th class="num">Stored</th><th class="num">Last activity</th></tr></thead>
      <tbody id="busiest"></tbody>
    </table>
  </section>
  <footer><span id="error" hidden></span> <span id="updated">waiting for the first update…</span></footer>
</main>
<script>
"use strict";
var REFRESH_MS = 2000;
var TOKEN = new URLSearchParams(location.search).get("token");
var SVG = "http://www.w3.org/2000/svg";
function $(id) { return document.getElementById(id); }
function int(n) { return Math.round(n).toLocaleString("en-US"); }
function rate(n) { return n >= 100 ? String(Math.round(n)) : n.toFixed(1); }
function tick(n) { return n % 1 === 0 ? String(n) : n.toFixed(1); }
function windowText(s) { return s >= 120 ? Math.round(s / 60) + " minutes" : s === 60 ? "minute" : s + " seconds"; }
function two(n) { return String(n).padStart(2, "0"); }
function uptime(s) {
  var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d > 0) return d + "d " + h + "h";
  if (h > 0) return h + "h " + two(m) + "m";
  return m + "m " + two(s % 60) + "s";
}
function bytes(b) {
  var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i === 0 ? b : b.toFixed(1)) + " " + units[i];
}
function ago(ms) {
  var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
function setNumber(id, n) { var el = $(id); el.textContent = int(n); el.dataset.value = String(n); }
function el(tag, attrs, text) {
  var e = document.createElementNS(SVG, tag);
  for (var k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function niceMax(v) {
  if (v <= 1) return 1;
  var p = Math.pow(10, Math.floor(Math.log10(v))), steps = [1, 2, 2.5, 5, 10];
  for (var i = 0; i < steps.length; i++) if (steps[i] * p >= v) return steps[i] * p;
  return 10 * p;
}

function renderChart(h) {
  var svg = $("chart"), W = 640, H = 170, L = 44, R = 8, T = 10, B = 22;
  svg.replaceChildren();
  var pts = h.points, end = pts.length > 0 ? pts[pts.length - 1].t : Date.now(), span = h.windowSeconds * 1000;
  var peak = 0;
  for (var i = 0; i < pts.length; i++) peak = Math.max(peak, pts[i].messagesPerSecond);
  var max = niceMax(peak);
  function x(t) { return L + (W - L - R) * Math.max(0, 1 - (end - t) / span); }
  function y(v) { return T + (H - T - B) * (1 - v / max); }
  [0, max / 2, max].forEach(function (v) {
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.appendChild(el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, tick(v)));
  });
  var minutes = h.windowSeconds >= 120 ? Math.round(h.windowSeconds / 60) : 0;
  svg.appendChild(el("text", { x: L, y: H - 4, class: "axis" }, minutes > 0 ? "−" + minutes + " min" : "−" + h.windowSeconds + " s"));
  svg.appendChild(el("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "axis" }, "now"));
  $("chart-title").textContent = "Messages per second, last " + windowText(h.windowSeconds);
  if (pts.length < 2) {
    svg.appendChild(el("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "collecting data…"));
  } else {
    var line = pts.map(function (p) { return x(p.t).toFixed(1) + "," + y(p.messagesPerSecond).toFixed(1); });
    var area = "M" + x(pts[0].t).toFixed(1) + "," + y(0) + " L" + line.join(" L") + " L" + x(end).toFixed(1) + "," + y(0) + " Z";
    svg.appendChild(el("path", { d: area, fill: "#2563eb", "fill-opacity": "0.12" }));
    svg.appendChild(el("polyline", { points: line.join(" "), fill: "none", stroke: "#2563eb", "stroke-width": "2", "stroke-linejoin": "round", "data-points": String(pts.length) }));
  }
  var now = pts.length > 0 ? pts[pts.length - 1].messagesPerSecond : 0;
  $("rate-now").textContent = "now " + rate(now) + "/s";
  $("rate-now").dataset.value = String(now);
  $("rate-peak").textContent = "peak " + rate(peak) + "/s";
  $("rate-peak").dataset.value = String(peak);
}

function renderRooms(rooms) {
  var body = $("busiest");
  body.replaceChildren();
  if (rooms.length === 0) {
    var tr = body.insertRow(), td = tr.insertCell();
    td.colSpan = 4; td.className = "empty"; td.textContent = "no rooms yet";
    return;
  }
  rooms.forEach(function (r) {
    var tr = body.insertRow();
    var name = tr.insertCell();
    name.className = "name"; name.title = r.name; name.dataset.name = r.name;
    name.textContent = r.name.length > 28 ? r.name.slice(0, 24) + "…" : r.name;
    var count = tr.insertCell();
    count.className = "num"; count.textContent = int(r.messageCount); count.dataset.value = String(r.messageCount);
    var size = tr.insertCell();
    size.className = "num"; size.textContent = bytes(r.byteLength || 0);
    var last = tr.insertCell();
    last.className = "num"; last.textContent = r.lastActivity ? ago(r.lastActivity) : "–";
  });
}

function render(s) {
  setNumber("peers", s.activePeers);
  setNumber("rooms", s.totalRooms);
  setNumber("messages", s.totalMessages);
  $("rooms-open").textContent = s.rooms.open + " open";
  $("bytes").textContent = bytes(s.rooms.bytes) + " stored";
  $("uptime").textContent = uptime(s.uptimeSeconds);
  $("uptime").dataset.value = String(s.uptimeSeconds);
  $("started").textContent = "since " + new Date(s.generatedAt - s.uptimeSeconds * 1000).toLocaleString();
  $("public-key").textContent = s.publicKey ? s.publicKey.slice(0, 16) + "…" : "";
  $("public-key").title = s.publicKey;
  var health = $("health");
  health.textContent = s.health.ok ? "healthy" : "not ready: " + s.health.reasons.join(", ");
  health.className = "badge " + (s.health.ok ? "ok" : "bad");
  renderChart(s.messagesPerSecond);
  renderRooms(s.busiestRooms);
  $("updated").textContent = "updated " + new Date(s.generatedAt).toLocaleTimeString() + " · refreshes every " + REFRESH_MS / 1000 + " s";
  document.body.dataset.generatedAt = String(s.generatedAt);
}

async function refresh() {
  try {
    var res = await fetch("stats", { cache: "no-store", headers: TOKEN ? { Authorization: "Bearer " + TOKEN } : {} });
    if (!res.ok) throw new Error("HTTP " + res.status);
    render(await res.json());
    $("error").hidden = true;
  } catch (err) {
    $("error").textContent = "cannot reach the monitor (" + err.message + ")";
    $("error").hidden = false;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
`
