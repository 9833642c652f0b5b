// busdctl web: the page's shared state, its WebSocket to busdctl, the tabs and the numbers table.
// map.js, sequence.js and browser.js register their views on window.Busd.
"use strict";

const Busd = (window.Busd = {
  token: document.body.dataset.token,
  peers: new Map(), // peer id -> peer (names, pid, uid, process, kind, quota...)
  edges: [],
  messages: [], // the latest messages, oldest first (at most KEEP)
  KEEP: 2000,
  own: [],
  window: 10,
  views: {}, // name -> {update(kind), shown()}
  activeTab: "map",
});

const SVG_NS = "http://www.w3.org/2000/svg";

Busd.url = function (path, params) {
  const query = new URLSearchParams(params || {});
  query.set("token", Busd.token);
  return `${path}?${query}`;
};

Busd.el = function (tag, attributes, text) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "className") element.className = value;
    else element.setAttribute(key, value);
  }
  if (text !== undefined) element.textContent = text;
  return element;
};

Busd.svg = function (tag, attributes, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value);
  }
  if (text !== undefined) element.textContent = text;
  return element;
};

// The name to show for a peer: its first well-known name, else its unique name.
Busd.label = function (id) {
  const peer = Busd.peers.get(id);
  if (!id) return "(broadcast)";
  if (peer && peer.names.length) return peer.names.filter((n) => n !== id)[0] || peer.names[0];
  return id;
};

// The same filter as busdctl's web_model.matches: every word somewhere in the message's names.
Busd.matches = function (message, words) {
  if (!words.length) return true;
  const names = (id) => (Busd.peers.get(id) || { names: [] }).names;
  const fields = [message.sender, message.destination, message.path, message.interface, message.member,
    message.error_name, ...names(message.sender), ...names(message.destination)];
  const haystack = fields.join("\n").toLowerCase();
  return words.every((word) => haystack.includes(word.toLowerCase()));
};

Busd.postJson = async function (path, body) {
  const response = await fetch(Busd.url(path), {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!response.ok) return { ok: false, error: `HTTP ${response.status}`, message: await response.text() };
  return response.json();
};

Busd.getJson = async function (path, params) {
  const response = await fetch(Busd.url(path, params));
  if (!response.ok) return { ok: false, error: `HTTP ${response.status}`, message: await response.text() };
  return response.json();
};

function setStatus(monitoring) {
  const status = document.getElementById("status");
  status.dataset.monitoring = monitoring ? "refused" : "ok";
  status.textContent = monitoring || "";
  status.hidden = !monitoring;
}

function applyMap(data) {
  Busd.peers = new Map(data.peers.map((peer) => [peer.id, peer]));
  Busd.edges = data.edges;
  Busd.window = data.window;
}

function addMessages(messages) {
  // A page that connects gets the latest messages, and its first tick may repeat some of them.
  const last = Busd.messages.length ? Busd.messages[Busd.messages.length - 1].id : 0;
  messages = messages.filter((m) => m.id > last);
  if (!messages.length) return;
  Busd.messages.push(...messages);
  if (Busd.messages.length > Busd.KEEP) Busd.messages.splice(0, Busd.messages.length - Busd.KEEP);
}

function refresh(kind) {
  for (const view of Object.values(Busd.views)) view.update(kind);
}

function connect(attempt) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${Busd.url("/events")}`);
  const state = document.getElementById("connection");
  socket.onopen = () => { state.dataset.state = "live"; state.textContent = "live"; state.title = ""; attempt = 0; };
  socket.onmessage = (event) => {
    const data = JSON.parse(event.data);
    if (data.type === "hello") {
      document.getElementById("bus").textContent = `${data.bus}  ·  busdctl ${data.version}`;
      Busd.own = data.own;
      Busd.messages = [];
      setStatus(data.monitoring);
      applyMap(data);
      addMessages(data.messages);
      refresh("hello");
    } else if (data.type === "tick") {
      setStatus(data.monitoring);
      applyMap(data);
      addMessages(data.messages);
      refresh("tick");
    } else if (data.type === "numbers") {
      showNumbers(data);
    }
  };
  socket.onclose = () => {
    state.dataset.state = "closed";
    state.textContent = "disconnected: retrying";
    state.title = "busdctl web stopped, or the bus went away. A new busdctl web has a new token: open the URL it prints.";
    setTimeout(() => connect(attempt + 1), Math.min(5000, 500 * 2 ** attempt));
  };
}

// ---- tabs

for (const button of document.querySelectorAll("#tabs button")) {
  button.addEventListener("click", () => {
    Busd.activeTab = button.dataset.tab;
    for (const other of document.querySelectorAll("#tabs button")) other.classList.toggle("active", other === button);
    for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.id === button.dataset.tab);
    const view = Busd.views[button.dataset.tab];
    if (view && view.shown) view.shown();
  });
}

// ---- the numbers: busdctl top's table and busd's per-user ledger

const NUMBER_COLUMNS = [
  ["connection", "CONNECTION"], ["names", "NAMES"], ["pid", "PID", true], ["process", "PROCESS"], ["uid", "UID", true],
  ["messages_in_per_s", "MSG IN/S", true], ["messages_out_per_s", "MSG OUT/S", true],
  ["bytes_in_per_s", "B IN/S", true], ["bytes_out_per_s", "B OUT/S", true],
  ["queued_in_bytes", "QUEUED IN", true], ["queued_out_bytes", "QUEUED OUT", true], ["queued_fds", "FDS", true],
  ["match_rules", "MATCHES", true], ["fill", "FILL"],
];

function shownNumber(key, value, row) {
  if (value === null || value === undefined) return "-";
  if (key === "names") return value.join(" ") || "-";
  if (key.endsWith("_per_s")) return value.toFixed(value < 10 ? 1 : 0);
  if (key === "fill") return `${(value * 100).toFixed(1)}% ${row.fill_of}`;
  return String(value);
}

function fillTable(table, columns, rows, keyName) {
  const head = table.querySelector("thead");
  const body = table.querySelector("tbody");
  head.replaceChildren(Busd.el("tr"));
  for (const [, title] of columns) head.firstChild.append(Busd.el("th", {}, title));
  body.replaceChildren(...rows.map((row) => {
    const tr = Busd.el("tr", { dataset: { [keyName]: row[columns[0][0]] } });
    for (const [key, , numeric] of columns) {
      const td = Busd.el("td", { className: numeric ? "n" : "" }, shownNumber(key, row[key], row));
      if (key === "fill" && row.fill !== null && row.fill !== undefined) {
        const meter = Busd.el("meter", { min: "0", max: "1", low: "0.5", high: "0.8", optimum: "0",
          value: String(row.fill) });
        td.prepend(meter, " ");
      }
      tr.append(td);
    }
    return tr;
  }));
}

function showNumbers(data) {
  const note = document.getElementById("numbers-note");
  note.textContent = data.available ? (data.reason || "Every 2 s, from the bus driver and org.freedesktop.DBus.Debug.Stats; rates between two looks.")
    : `No numbers: ${data.reason}`;
  if (!data.available) return;
  fillTable(document.getElementById("numbers-table"), NUMBER_COLUMNS, data.connections, "connection");
  const ledger = [];
  for (const [uid, lines] of Object.entries(data.users || {})) {
    for (const [line, [used, peak, quota]] of Object.entries(lines)) ledger.push({ uid, line, used, peak, quota });
  }
  fillTable(document.getElementById("ledger-table"),
    [["uid", "UID", true], ["line", "LINE"], ["used", "USED", true], ["peak", "PEAK", true], ["quota", "QUOTA", true]],
    ledger, "uid");
  if (!ledger.length) {
    document.querySelector("#ledger-table tbody").replaceChildren(
      Busd.el("tr", {}, "This bus keeps no per-user ledger (busd does)."));
  }
}

window.addEventListener("load", () => connect(0));
