// Networks: the host's virtual networks (list, create, delete), and a VM's tab of NICs and port forwards.

import {api, vmPath} from "./api.js";
import {$, el} from "./dom.js";
import {actionButton} from "./main.js";

// -- the Networks section ---------------------------------------------------------------------------------------
export async function showNetworks() {
  const box = $("networks");
  const rows = el("tbody", {id: "network-rows"});
  const name = el("input", {id: "network-name", placeholder: "name", size: "14"});
  const mode = el("select", {id: "network-mode"}, ...["nat", "isolated", "bridged"].map((m) => el("option", {value: m, text: m})));
  const subnet = el("input", {id: "network-subnet", placeholder: "subnet (optional)", size: "18"});
  const create = actionButton("Create network", "create-network", "", async () => {
    const body = {name: name.value.trim(), mode: mode.value};
    if (subnet.value.trim()) body.subnet = subnet.value.trim();
    await api("POST", "/v1/networks", body);
    await showNetworks();
  });
  box.replaceChildren(el("h2", {text: "Networks"}),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Name", "Mode", "Subnet", "Gateway", "DHCP", "State", "Running VMs", ""]
      .map((h) => el("th", {text: h})))), rows),
    el("p", {class: "create-network"}, name, " ", mode, " ", subnet, " ", create, el("span", {class: "error", role: "alert"})));
  let networks;
  try { networks = await api("GET", "/v1/networks"); } catch (e) { box.append(el("span", {class: "error", text: e.message})); return; }
  for (const net of networks) {
    const remove = actionButton("Delete", "delete-network", "", async () => {
      await api("DELETE", "/v1/networks/" + encodeURIComponent(net.name));
      await showNetworks();
    }, {confirm: "Delete network " + net.name + "?"});
    rows.append(el("tr", {dataset: {network: net.name}},
      ...[net.name, net.mode, net.subnet || "", net.gateway || "", net.dhcp ? "yes" : "no", net.state, net.vms.join(", ")]
        .map((text) => el("td", {text})),
      el("td", {}, remove, el("span", {class: "error", role: "alert"}))));
  }
}

// -- a VM's Network tab: its NICs and addresses, and its port forwards ---------------------------------------------
// The add form is made once: a refresh (after any action or event) redraws the lists, not what the user typed or
// the error of the last add.
export async function show(vm, box) {
  const spec = el("input", {id: "forward-spec", placeholder: "[ADDR:]HOSTPORT:GUESTPORT[/udp]", size: "28"});
  const add = actionButton("Add port forward", "add-forward", vm,
                           () => api("POST", vmPath(vm, "/port-forwards"), {forward: spec.value.trim()}));
  box.replaceChildren(el("div", {id: "vm-nics"}),
    el("div", {id: "vm-forwards"}, el("h3", {text: "Port forwards"}), el("ul", {id: "forward-list"}),
       el("p", {}, spec, " ", add, el("span", {class: "error", role: "alert"}))));
  await refresh(vm, box);
}

export async function refresh(vm, box) {
  const nics = box.querySelector("#vm-nics");
  const list = box.querySelector("#forward-list");
  if (!nics || !list) return;
  try {
    const addresses = await api("GET", vmPath(vm, "/addresses"));
    nics.replaceChildren(el("h3", {text: "NICs"}), el("ul", {}, ...addresses.map((nic) =>
      el("li", {text: Object.entries(nic).filter(([, v]) => v !== null && v !== "").map(([k, v]) => k + ": " + v).join(", ")}))));
    const forwards = await api("GET", vmPath(vm, "/port-forwards"));
    list.replaceChildren(...forwards.map((f) => {
      const text = (f.host_addr ? f.host_addr + ":" : "") + f.host_port + (f.protocol === "udp" ? "/udp" : "");
      return el("li", {dataset: {forward: text}}, el("span", {text: text + " → " + f.nic + " port " + f.guest_port + " "}),
        actionButton("Remove", "remove-forward", vm, () => api("POST", vmPath(vm, "/port-forwards/remove"), {forward: text})),
        el("span", {class: "error", role: "alert"}));
    }));
  } catch (e) {
    nics.replaceChildren(el("span", {class: "error", role: "alert", text: "Network: " + e.message}));
  }
}
