// The map: connections as nodes on a ring around the bus driver, edges for the calls and signals of
// the last seconds (thicker with rate), nodes coloured by quota or queue use, broadcast signals as halos.
"use strict";

(function () {
  const svg = document.getElementById("map-svg");
  const RADIUS = 20;
  // Drawn elements by key, with what they were drawn from: an unchanged node or edge keeps its element
  // (its tooltip stays open, and whoever holds it still holds the page's element).
  let drawn = new Map();

  function reuse(key, from, make) {
    const signature = JSON.stringify(from);
    const old = drawn.get(key);
    const element = old && old.signature === signature ? old.element : make();
    next.set(key, { signature, element });
    return element;
  }
  let next = new Map();

  function fillColour(peer) {
    if (peer.quota === null || peer.quota === undefined) return "hsl(120, 25%, 72%)";
    const f = Math.max(0, Math.min(1, peer.quota));
    return `hsl(${Math.round(120 * (1 - f))}, 60%, ${f > 0.5 ? 55 : 60}%)`;
  }

  // Deterministic places: the driver in the middle, the peers on rings around it in name order (up to 16 a
  // ring, neighbours alternating between rings so that labels do not collide), quiet ones on inner rings.
  function layout(width, height, quiet) {
    const places = new Map();
    const others = [...Busd.peers.values()].filter((p) => p.kind !== "driver");
    others.sort((a, b) => (a.kind === b.kind ? Busd.label(a.id).localeCompare(Busd.label(b.id))
      : a.kind === "bridge" ? 1 : b.kind === "bridge" ? -1 : 0));
    const cx = width / 2;
    const cy = height / 2;
    const stretch = width > height ? 1.35 : 1;
    for (const peer of Busd.peers.values()) if (peer.kind === "driver") places.set(peer.id, [cx, cy]);
    const outer = Math.max(80, Math.min(width, height) / 2 - 70);
    const ring = (peers, perRing, from, to) => {
      const rings = Math.max(1, Math.ceil(peers.length / perRing));
      peers.forEach((peer, index) => {
        const radius = outer * (from - ((from - to) * (index % rings)) / Math.max(1, rings - 1));
        const angle = (2 * Math.PI * index) / peers.length - Math.PI / 2;
        places.set(peer.id, [cx + radius * Math.cos(angle) * stretch, cy + radius * Math.sin(angle)]);
      });
    };
    ring(others.filter((p) => !quiet(p)), 16, 1, 0.62);
    ring(others.filter(quiet), 24, 0.45, 0.25);
    return places;
  }

  function edgePath(from, to) {
    const [x1, y1] = from;
    const [x2, y2] = to;
    const dx = x2 - x1;
    const dy = y2 - y1;
    const length = Math.hypot(dx, dy) || 1;
    // Bend to the right of the direction of travel, so A->B and B->A are two curves.
    const bend = Math.min(60, length * 0.18);
    const mx = (x1 + x2) / 2 - (dy / length) * bend;
    const my = (y1 + y2) / 2 + (dx / length) * bend;
    const trim = (px, py, qx, qy) => {
      const d = Math.hypot(qx - px, qy - py) || 1;
      return [px + ((qx - px) / d) * (RADIUS + 4), py + ((qy - py) / d) * (RADIUS + 4)];
    };
    const [sx, sy] = trim(x1, y1, mx, my);
    const [ex, ey] = trim(x2, y2, mx, my);
    return {
      d: `M${sx.toFixed(1)},${sy.toFixed(1)} Q${mx.toFixed(1)},${my.toFixed(1)} ${ex.toFixed(1)},${ey.toFixed(1)}`,
      middle: [0.25 * sx + 0.5 * mx + 0.25 * ex, 0.25 * sy + 0.5 * my + 0.25 * ey],
    };
  }

  function defs() {
    const d = Busd.svg("defs");
    for (const kind of ["call", "signal"]) {
      const marker = Busd.svg("marker", { id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: "8", refY: "5",
        markerWidth: "5", markerHeight: "5", orient: "auto-start-reverse", markerUnits: "strokeWidth" });
      marker.append(Busd.svg("path", { d: "M0,0 L10,5 L0,10 z", fill: kind === "call" ? "#3a8f5c" : "#c7782a" }));
      d.append(marker);
    }
    return d;
  }

  // On a crowded bus, a peer with no well-known name and no traffic is a small unlabelled dot (its tooltip says who).
  function isQuiet(peer, busy) {
    return Busd.peers.size > 24 && !busy.has(peer.id) && !peer.broadcasts && peer.kind === "peer"
      && !peer.names.some((name) => !name.startsWith(":"));
  }

  function quietNode(peer, [x, y]) {
    const g = Busd.svg("g", { class: `node quiet ${peer.kind}`, transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
      dataset: { peer: peer.id, names: peer.names.join(" "), kind: peer.kind } });
    g.append(Busd.svg("circle", { class: "body", r: 7, fill: fillColour(peer) }));
    g.append(Busd.svg("title", {}, [peer.id, peer.process ? `${peer.process} (${peer.pid})` : "",
      peer.user ? `uid ${peer.uid} ${peer.user}` : "", "no traffic in the last seconds"].filter(Boolean).join("\n")));
    return g;
  }

  function node(peer, [x, y]) {
    const g = Busd.svg("g", { class: `node ${peer.kind}${peer.gone ? " gone" : ""}`, transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
      dataset: { peer: peer.id, names: peer.names.join(" "), kind: peer.kind } });
    if (peer.quota !== null && peer.quota !== undefined) g.dataset.fill = peer.quota.toFixed(3);
    if (peer.broadcasts > 0) {
      g.append(Busd.svg("circle", { class: "halo", r: RADIUS + 7,
        "stroke-width": Math.min(12, 2 + 2.5 * Math.log2(1 + peer.broadcasts)).toFixed(1) }));
    }
    if (peer.kind === "driver") {
      g.append(Busd.svg("rect", { class: "body", x: -RADIUS, y: -RADIUS, width: 2 * RADIUS, height: 2 * RADIUS, rx: 5 }));
    } else if (peer.kind === "bridge") {
      g.append(Busd.svg("rect", { class: "body", x: -RADIUS * 0.8, y: -RADIUS * 0.8, width: 1.6 * RADIUS,
        height: 1.6 * RADIUS, transform: "rotate(45)" }));
    } else {
      g.append(Busd.svg("circle", { class: "body", r: RADIUS, fill: fillColour(peer) }));
    }
    const label = Busd.label(peer.id);
    g.append(Busd.svg("text", { class: "name", y: RADIUS + 15, "text-anchor": "middle" },
      label.length > 34 ? `…${label.slice(-33)}` : label));
    const facts = [peer.id !== label ? peer.id : "", peer.stands_for ? `stand-in for ${peer.stands_for}` : "", peer.process ? `${peer.process}${peer.pid ? ` (${peer.pid})` : ""}` : "",
      peer.user ? `uid ${peer.uid} ${peer.user}` : ""].filter(Boolean).join(" · ");
    g.append(Busd.svg("text", { class: "facts", y: RADIUS + 28, "text-anchor": "middle" }, facts));
    const more = peer.names.length > 1 ? `\nalso: ${peer.names.filter((n) => n !== label).join(", ")}` : "";
    const quota = peer.quota !== null && peer.quota !== undefined
      ? `\n${(peer.quota * 100).toFixed(1)}% of ${peer.quota_resource}` : "";
    g.append(Busd.svg("title", {}, `${label}${peer.gone ? " (disconnected)" : ""}\n${facts}${more}${quota}` +
      (peer.broadcasts ? `\n${peer.broadcasts.toFixed(1)} broadcast signals/s` : "")));
    return g;
  }

  function draw() {
    const width = svg.clientWidth || 900;
    const height = svg.clientHeight || 600;
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const busy = new Set(Busd.edges.flatMap((edge) => [edge.from, edge.to]));
    const places = layout(width, height, (peer) => isQuiet(peer, busy));
    const edges = Busd.svg("g", { class: "edges" });
    for (const edge of Busd.edges) {
      if (!places.has(edge.from) || !places.has(edge.to) || edge.from === edge.to) continue;
      const key = `${edge.kind} ${edge.from} ${edge.to}`;
      edges.append(reuse(key, [edge, places.get(edge.from), places.get(edge.to), Busd.label(edge.from),
        Busd.label(edge.to)], () => edgeElements(edge, places)));
    }
    const nodes = Busd.svg("g", { class: "nodes" });
    for (const peer of Busd.peers.values()) {
      if (!places.has(peer.id)) continue;
      const quiet = isQuiet(peer, busy);
      nodes.append(reuse(peer.id, [peer, places.get(peer.id), quiet],
        () => (quiet ? quietNode : node)(peer, places.get(peer.id))));
    }
    drawn = next;
    next = new Map();
    svg.replaceChildren(defs(), edges, nodes);
    summarise();
  }

  // An edge: its path and its rate label.
  function edgeElements(edge, places) {
    const group = Busd.svg("g", { class: "edge-group" });
    const shape = edgePath(places.get(edge.from), places.get(edge.to));
    const path = Busd.svg("path", { class: `edge ${edge.kind}`, d: shape.d,
      "stroke-width": (1.5 + 2.5 * Math.log2(1 + edge.rate)).toFixed(1), "marker-end": `url(#arrow-${edge.kind})`,
      dataset: { from: edge.from, to: edge.to, kind: edge.kind, count: edge.count } });
    path.append(Busd.svg("title", {}, `${Busd.label(edge.from)} → ${Busd.label(edge.to)}: ${edge.count} ` +
      `${edge.kind === "call" ? "calls" : "signals"} in ${Busd.window} s (${edge.rate.toFixed(1)}/s)`));
    group.append(path, Busd.svg("text", { class: `rate ${edge.kind}`, x: shape.middle[0].toFixed(1),
      y: (shape.middle[1] - 4).toFixed(1), "text-anchor": "middle" }, `${edge.rate.toFixed(1)}/s`));
    return group;
  }

  function summarise() {
    const calls = Busd.edges.filter((e) => e.kind === "call").reduce((sum, e) => sum + e.rate, 0);
    const signals = Busd.edges.filter((e) => e.kind === "signal").reduce((sum, e) => sum + e.rate, 0)
      + [...Busd.peers.values()].reduce((sum, p) => sum + (p.broadcasts || 0), 0);
    document.getElementById("map-summary").textContent =
      `${Busd.peers.size} peers · ${calls.toFixed(1)} calls/s · ${signals.toFixed(1)} signals/s`;
    document.getElementById("map-window").textContent =
      `Edges: the last ${Busd.window} s, thicker with rate. This page's own connections (${Busd.own.join(", ")}) are not drawn.`;
  }

  Busd.views.map = { update: () => { if (Busd.activeTab === "map") draw(); }, shown: draw };
  window.addEventListener("resize", () => Busd.activeTab === "map" && draw());
})();
