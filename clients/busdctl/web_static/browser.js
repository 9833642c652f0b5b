// The browser: names -> object tree -> interfaces -> methods, properties and signals, from
// introspection. Properties can be read and methods called with `busdctl call`'s typed arguments.
"use strict";

(function () {
  const services = document.getElementById("services");
  const paths = document.getElementById("paths");
  const interfaces = document.getElementById("interfaces");
  const title = document.getElementById("object-title");
  const STANDARD = /^org\.freedesktop\.DBus\.(Introspectable|Peer|Properties|ObjectManager)$/;
  let current = { service: "", path: "" };

  function select(list, item) {
    for (const other of list.children) other.classList.toggle("selected", other === item);
  }

  function problem(where, answer) {
    where.replaceChildren(Busd.el("li", { className: "error" },
      `${answer.error}: ${answer.message}${answer.hint ? `\n${answer.hint}` : ""}`));
  }

  async function loadServices() {
    const answer = await Busd.getJson("/api/services");
    if (!answer.ok) return problem(services, answer);
    const items = [];
    for (const name of answer.names) items.push(Busd.el("li", { dataset: { service: name } }, name));
    for (const name of answer.activatable) {
      items.push(Busd.el("li", { dataset: { service: name }, className: "unique", title: "activatable" }, `${name} (activatable)`));
    }
    for (const name of answer.unique) {
      if (!Busd.own.includes(name)) items.push(Busd.el("li", { dataset: { service: name }, className: "unique" }, name));
    }
    services.replaceChildren(...items);
    const again = services.querySelector(`li[data-service="${CSS.escape(current.service)}"]`);
    if (again) again.classList.add("selected");
  }

  async function loadTree(item) {
    select(services, item);
    current = { service: item.dataset.service, path: "" };
    paths.replaceChildren(Busd.el("li", {}, "introspecting…"));
    interfaces.replaceChildren();
    const answer = await Busd.getJson("/api/tree", { service: current.service });
    if (!answer.ok) return problem(paths, answer);
    paths.replaceChildren(...answer.paths.map((path) => Busd.el("li", { dataset: { path } }, path)));
    for (const error of answer.errors) paths.append(Busd.el("li", { className: "error" }, error));
    // Open the deepest object when the tree is one branch, as most services are.
    if (answer.paths.length && answer.paths.every((p) => answer.paths[answer.paths.length - 1].startsWith(p))) {
      loadObject(paths.lastElementChild);
    }
  }

  async function loadObject(item) {
    select(paths, item);
    current.path = item.dataset.path;
    title.textContent = `${current.service} ${current.path}`;
    const answer = await Busd.getJson("/api/object", current);
    if (!answer.ok) return problem(interfaces, answer);
    interfaces.replaceChildren(...answer.interfaces.map(interfaceBox));
  }

  function interfaceBox(iface) {
    const box = Busd.el("details", { className: "interface", dataset: { interface: iface.name } });
    if (!STANDARD.test(iface.name)) box.open = true;
    box.append(Busd.el("summary", {}, iface.name + (iface.flags.length ? `  [${iface.flags.join(" ")}]` : "")));
    for (const member of iface.members) box.append(memberRow(iface.name, member));
    return box;
  }

  function memberRow(iface, member) {
    const row = Busd.el("div", { className: "member", dataset: { kind: member.kind, member: member.name } });
    row.append(Busd.el("span", { className: "kind" }, member.kind));
    row.append(Busd.el("span", { className: "name" }, member.name));
    const form = Busd.el("span", { className: "form" });
    const result = Busd.el("div", { className: "result", dataset: { state: "none" } });
    if (member.kind === "method") {
      form.append(Busd.el("span", { className: "sig" }, `(${member.signature}) → (${member.result})`));
      const args = Busd.el("input", { className: "args", type: "text", spellcheck: "false",
        placeholder: member.signature ? `arguments for ${member.signature}, as busdctl call takes them` : "no arguments" });
      if (!member.signature) args.disabled = true;
      const button = Busd.el("button", { className: "call" }, "Call");
      const run = () => callMethod(iface, member, args.value, result);
      button.addEventListener("click", run);
      args.addEventListener("keydown", (event) => { if (event.key === "Enter") run(); });
      form.append(args, button);
    } else if (member.kind === "property") {
      form.append(Busd.el("span", { className: "sig" }, `${member.signature} ${member.access}`));
      if (member.value) show(result, "ok", member.value.text);
      if (member.access.includes("read")) {
        const button = Busd.el("button", { className: "read" }, "Read");
        button.addEventListener("click", () => readProperty(iface, member, result));
        form.append(button);
      }
    } else {
      form.append(Busd.el("span", { className: "sig" }, `(${member.signature})`));
    }
    row.append(form, result);
    return row;
  }

  function show(result, state, text) {
    result.dataset.state = state;
    result.textContent = text;
  }

  async function callMethod(iface, member, argumentText, result) {
    show(result, "pending", "calling…");
    const answer = await Busd.postJson("/api/call", { ...current, interface: iface, member: member.name,
      signature: member.signature, arguments: argumentText });
    if (answer.ok) show(result, "ok", answer.text || "(empty reply)");
    else show(result, "error", `${answer.error}: ${answer.message}${answer.hint ? `\n${answer.hint}` : ""}`);
  }

  async function readProperty(iface, member, result) {
    show(result, "pending", "reading…");
    const answer = await Busd.getJson("/api/property", { ...current, interface: iface, name: member.name });
    if (answer.ok) show(result, "ok", answer.text);
    else show(result, "error", `${answer.error}: ${answer.message}`);
  }

  services.addEventListener("click", (event) => {
    const item = event.target.closest("li[data-service]");
    if (item) loadTree(item);
  });
  paths.addEventListener("click", (event) => {
    const item = event.target.closest("li[data-path]");
    if (item) loadObject(item);
  });
  Busd.views.browser = { update: () => {}, shown: loadServices };
})();
