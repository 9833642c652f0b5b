// The sequence: the latest messages in Bustle's manner. One lane per connection, time downwards; a call
// is an arrow to its callee, its reply a dashed arrow back with the time between them, a broadcast
// signal a dot on its sender's lane across all lanes. Pausable, filterable, exportable as pcapng.
"use strict";

(function () {
  const svg = document.getElementById("sequence-svg");
  const scroller = document.getElementById("sequence-scroll");
  const filterBox = document.getElementById("filter");
  const pauseButton = document.getElementById("pause");
  const exportLink = document.getElementById("export");
  const count = document.getElementById("sequence-count");
  const SHOWN = 250;
  const ROW = 24;
  const TOP = 48;
  const LEFT = 110;
  const LANE = 190;
  let paused = false;
  let newWhilePaused = 0;
  let lastSeenId = 0;
  let frozen = []; // the messages as they were when paused

  function words() { return filterBox.value.split(/\s+/).filter(Boolean); }

  function updateExport() {
    const params = {};
    if (words().length) params.filter = words().join(" ");
    exportLink.href = Busd.url("/capture.pcapng", params);
  }

  function clock(seconds) {
    const date = new Date(seconds * 1000);
    return `${date.toLocaleTimeString([], { hour12: false })}.${String(date.getMilliseconds()).padStart(3, "0")}`;
  }

  function duration(seconds) {
    return seconds < 1 ? `${(seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1)} ms` : `${seconds.toFixed(2)} s`;
  }

  function arrow(x1, x2, y, text, klass) {
    const parts = [];
    if (x1 === x2) {
      parts.push(Busd.svg("path", { d: `M${x1},${y - 6} h24 v10 h-22`, "marker-end": "url(#seq-arrow)" }));
    } else {
      parts.push(Busd.svg("line", { x1, y1: y, x2: x2 + (x2 > x1 ? -4 : 4), y2: y, "marker-end": "url(#seq-arrow)" }));
    }
    const anchorX = x1 === x2 ? x1 + 30 : (x1 + x2) / 2;
    parts.push(Busd.svg("text", { x: anchorX, y: y - 5, "text-anchor": x1 === x2 ? "start" : "middle", class: klass || "" }, text));
    return parts;
  }

  function draw() {
    const filter = words();
    const shown = (paused ? frozen : Busd.messages).filter((m) => Busd.matches(m, filter)).slice(-SHOWN);
    const lanes = [];
    for (const m of shown) {
      for (const id of [m.sender, m.destination]) if (id && !lanes.includes(id)) lanes.push(id);
    }
    const laneX = (id) => LEFT + LANE / 2 + lanes.indexOf(id) * LANE;
    const width = LEFT + Math.max(1, lanes.length) * LANE + 40;
    const height = TOP + shown.length * ROW + 20;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const defs = Busd.svg("defs");
    const marker = Busd.svg("marker", { id: "seq-arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7",
      markerHeight: "7", orient: "auto-start-reverse", markerUnits: "userSpaceOnUse" });
    marker.append(Busd.svg("path", { d: "M0,1 L10,5 L0,9 z", fill: "#6b6f76" }));
    defs.append(marker);
    const layer = [defs];
    for (const id of lanes) {
      const x = laneX(id);
      layer.push(Busd.svg("line", { class: "lane-line", x1: x, y1: TOP - 8, x2: x, y2: height }));
      const head = Busd.svg("g", { class: "lane-head", dataset: { lane: id } });
      const label = Busd.label(id);
      head.append(Busd.svg("rect", { x: x - LANE / 2 + 8, y: 6, width: LANE - 16, height: 30, rx: 4 }));
      head.append(Busd.svg("text", { x, y: 19 }, label.length > 28 ? `…${label.slice(-27)}` : label));
      head.append(Busd.svg("text", { x, y: 31, class: "facts" }, label !== id ? id : ""));
      head.append(Busd.svg("title", {}, `${label} ${id}`));
      layer.push(head);
    }
    const rowOf = new Map(shown.map((m, index) => [m.id, index]));
    shown.forEach((m, index) => {
      const y = TOP + index * ROW + ROW / 2;
      const isBroadcast = m.type === "signal" && !m.destination;
      const g = Busd.svg("g", { class: `msg ${m.type}${isBroadcast ? " broadcast" : ""}`,
        dataset: { id: m.id, type: m.type, member: m.member } });
      g.append(Busd.svg("text", { x: 6, y: y + 4, class: "time" }, clock(m.time)));
      const from = laneX(m.sender);
      if (m.type === "call") {
        g.append(...arrow(from, laneX(m.destination), y, `${m.member}(${m.signature})`));
      } else if (m.type === "return" || m.type === "error") {
        const what = m.type === "error" ? `✗ ${m.error_name}` : `↩ ${m.member || "reply"}`;
        const took = m.latency !== null ? ` · ${duration(m.latency)}` : "";
        g.append(...arrow(from, laneX(m.destination), y, `${what}${took}`));
        if (m.reply_to !== null && rowOf.has(m.reply_to)) {
          const callY = TOP + rowOf.get(m.reply_to) * ROW + ROW / 2;
          const x = laneX(m.destination) - 6;
          layer.push(Busd.svg("line", { class: "pair", x1: x, y1: callY, x2: x, y2: y }));
        }
      } else if (isBroadcast) {
        const left = LEFT + 10;
        const right = LEFT + lanes.length * LANE - 10;
        g.append(Busd.svg("line", { x1: left, y1: y, x2: right, y2: y }));
        g.append(Busd.svg("circle", { cx: from, cy: y, r: 4 }));
        g.append(Busd.svg("text", { x: from + 8, y: y - 5 }, `${m.interface}.${m.member}`));
      } else {
        g.append(...arrow(from, laneX(m.destination), y, `${m.interface}.${m.member}`));
      }
      g.append(Busd.svg("title", {}, [`${m.type} #${m.serial}`, `${Busd.label(m.sender)} → ${m.destination ? Busd.label(m.destination) : "everyone"}`,
        `${m.path} ${m.interface}.${m.member}`, m.signature ? `signature ${m.signature}` : "", `${m.size} bytes`,
        m.error_name ? `${m.error_name}: ${m.text}` : ""].filter(Boolean).join("\n")));
      layer.push(g);
    });
    const stick = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 30;
    svg.replaceChildren(...layer);
    if (stick) scroller.scrollTop = scroller.scrollHeight;
    count.textContent = `${shown.length} of ${Busd.messages.length} messages shown` +
      (filter.length ? " (filtered)" : "") + (paused ? ` · paused, ${newWhilePaused} new` : "");
  }

  function update() {
    const latest = Busd.messages.length ? Busd.messages[Busd.messages.length - 1].id : 0;
    if (paused) {
      newWhilePaused += Busd.messages.filter((m) => m.id > lastSeenId).length;
      lastSeenId = Math.max(lastSeenId, latest);
      count.textContent = count.textContent.replace(/paused, \d+ new/, `paused, ${newWhilePaused} new`);
      return;
    }
    lastSeenId = latest;
    if (Busd.activeTab === "sequence") draw();
  }

  pauseButton.addEventListener("click", () => {
    paused = !paused;
    newWhilePaused = 0;
    frozen = paused ? Busd.messages.slice() : [];
    pauseButton.dataset.paused = String(paused);
    pauseButton.textContent = paused ? "Resume" : "Pause";
    draw();
  });
  filterBox.addEventListener("input", () => { updateExport(); draw(); });
  updateExport();
  Busd.views.sequence = { update, shown: draw };
})();
