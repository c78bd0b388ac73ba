// Draws the agent's /ui/graph.json as Kiali draws a mesh: workloads as circles, services as
// triangles, HTTP edges coloured by their 5xx rate, TCP edges from the kernel dashed. The agent
// computes every figure; this only lays the nodes out and draws them, every POLL_MS.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const POLL_MS = 1500;
const R = 20; // node radius
const params = new URLSearchParams(location.search);
const DATA = "/ui/graph.json" +
  (params.has("window") ? "?window=" + encodeURIComponent(params.get("window")) : "");
const svg = document.getElementById("graph");
const statusLine = document.getElementById("status");
let updates = 0;

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  if (parent) parent.appendChild(e);
  return e;
}

const num = (x, digits) => (x === null || x === undefined ? "–" : x.toFixed(digits));
const rate = (x) => num(x, x !== null && x < 10 ? 2 : 1);
const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
function bytes(x) {
  if (x === null || x === undefined) return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  return x.toFixed(i ? 1 : 0) + " " + units[i];
}

// Column of each node: the longest path to it from a node nothing calls (cycles stop growing
// after as many rounds as there are nodes).
function columns(graph) {
  const col = new Map(graph.nodes.map((n) => [n.id, 0]));
  for (let round = 0; round < graph.nodes.length; round++) {
    let changed = false;
    for (const e of graph.edges) {
      if (col.get(e.source) + 1 > col.get(e.target)) {
        col.set(e.target, col.get(e.source) + 1);
        changed = true;
      }
    }
    if (!changed) break;
  }
  return col;
}

function layout(graph, width, height) {
  const col = columns(graph);
  const byCol = [];
  for (const n of graph.nodes) (byCol[col.get(n.id)] ||= []).push(n);
  const pos = new Map();
  const cols = byCol.length;
  byCol.forEach((nodes, c) => {
    const x = cols === 1 ? width / 2 : 90 + (c * (width - 180)) / (cols - 1);
    nodes.forEach((n, i) => pos.set(n.id, { x, y: ((i + 1) * height) / (nodes.length + 1) }));
  });
  return pos;
}

function edgeClass(e) {
  if (e.protocol === "tcp") return "tcp";
  if (e.error_rate === null || e.error_rate === undefined) return "idle";
  if (e.error_rate >= 0.2) return "failure";
  return e.error_rate > 0.001 ? "degraded" : "ok";
}

// Two lines: the window's rates, then the totals since the agent started.
function edgeLabel(e) {
  if (e.protocol === "tcp") {
    return [`TCP ${bytes(e.bps)}/s · ${rate(e.cps)} conn/s`,
            `${e.connections} conn · ${bytes(e.bytes)}`];
  }
  return [`${rate(e.rps)} rps · ${pct(e.error_rate)} 5xx · p99 ${num(e.p99_ms, 1)} ms`,
          `${e.requests} req · ${e.errors} 5xx`];
}

// Every figure of the edge as a data attribute (for tests and the curious), nulls left out.
function edgeData(e) {
  const d = { "data-source": e.source, "data-target": e.target, "data-protocol": e.protocol };
  for (const k of ["requests", "errors", "rps", "error_rate", "p99_ms",
                   "connections", "bytes", "cps", "bps"]) {
    if (e[k] !== null && e[k] !== undefined) d["data-" + k.replace("_", "-")] = e[k];
  }
  return d;
}

function drawEdges(graph, pos, root, middle) {
  // Edges between the same two nodes (HTTP and TCP, or both directions) bend apart.
  const seen = new Map();
  for (const e of graph.edges) {
    const a = pos.get(e.source), b = pos.get(e.target);
    const pair = [e.source, e.target].sort().join(" ");
    const nth = seen.get(pair) || 0;
    seen.set(pair, nth + 1);
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    // Bend outwards (away from the middle of the picture), where there is room for labels.
    const bend = Math.ceil(nth / 2) * 110 * (nth % 2 ? 1 : -1);
    const m = { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 };
    const outwards = Math.sign(m.y - middle || 1) * Math.sign(dx || 1);
    const c = { x: m.x - (dy / len) * bend * outwards, y: m.y + (dx / len) * bend * outwards };
    // End at the node's rim, not its centre, so the arrowhead shows.
    const cx = b.x - c.x, cy = b.y - c.y, cl = Math.hypot(cx, cy) || 1;
    const end = { x: b.x - (cx / cl) * (R + 3), y: b.y - (cy / cl) * (R + 3) };
    const kind = edgeClass(e);
    const g = el("g", { class: "edge " + e.protocol + " " + kind, ...edgeData(e) }, root);
    el("path", { d: `M${a.x},${a.y} Q${c.x},${c.y} ${end.x},${end.y}`,
                 "marker-end": `url(#arrow-${kind})` }, g);
    const x = (a.x + 2 * c.x + b.x) / 4, y = (a.y + 2 * c.y + b.y) / 4;
    const [rates, totals] = edgeLabel(e);
    el("text", { x, y: y - 8 }, g).textContent = rates;
    el("text", { x, y: y + 16, class: "totals" }, g).textContent = totals;
  }
}

function drawNodes(graph, pos, root) {
  for (const n of graph.nodes) {
    const { x, y } = pos.get(n.id);
    const unknown = n.name === "unknown" ? " unknown" : "";
    const g = el("g", { class: "node " + n.kind + unknown, "data-id": n.id }, root);
    if (n.kind === "service") {
      el("polygon", { points: `${x},${y - R} ${x + R},${y + R * 0.75} ${x - R},${y + R * 0.75}` }, g);
    } else {
      el("circle", { cx: x, cy: y, r: R }, g);
    }
    el("text", { x, y: y + R + 14 }, g).textContent = n.name;
    el("text", { x, y: y + R + 27, class: "ns" }, g).textContent = n.namespace;
  }
}

function arrows(root) {
  const defs = el("defs", {}, root);
  const colours = { ok: "#16a34a", degraded: "#ea8c00", failure: "#dc2626", idle: "#9ca3af",
                    tcp: "#2563eb" };
  for (const [kind, colour] of Object.entries(colours)) {
    const m = el("marker", { id: "arrow-" + kind, viewBox: "0 0 10 10", refX: 9, refY: 5,
                             markerWidth: 7, markerHeight: 7, orient: "auto" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", fill: colour }, m);
  }
}

function draw(graph) {
  svg.replaceChildren();
  arrows(svg);
  const height = svg.clientHeight || 700;
  const pos = layout(graph, svg.clientWidth || 1200, height);
  drawEdges(graph, pos, svg, height / 2);
  drawNodes(graph, pos, svg);
  updates++;
  svg.setAttribute("data-updates", updates);
  if (graph.window_s !== null) svg.setAttribute("data-window", graph.window_s);
  const rates = graph.window_s === null ? "rates from the next sample on"
    : `rates over ${graph.window_s.toFixed(1)} s`;
  statusLine.textContent = `${graph.edges.length} edges · ${rates} · ` +
    new Date().toLocaleTimeString();
}

async function poll() {
  try {
    const r = await fetch(DATA, { cache: "no-store" });
    if (!r.ok) throw new Error(`${DATA}: ${r.status}`);
    draw(await r.json());
  } catch (err) {
    statusLine.textContent = "agent unreachable: " + err.message;
  }
  setTimeout(poll, POLL_MS);
}

poll();
