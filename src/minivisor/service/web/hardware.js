// A VM's hardware: its CPUs and memory and a new disk (powered off), its NICs and CD-ROM (running too), each
// changed through its API call with what is refused said next to its form; then each virtual device as
// minivisor makes it and the exact QEMU command line (GET /v1/vms/{name}/explain, what `minivisor vm explain` prints).

import {api, vmPath} from "./api.js";
import {el} from "./dom.js";
import {actionButton} from "./main.js";
import {cdromBar} from "./consoles.js";

const NIC_MODELS = ["vmxnet3", "e1000", "e1000e", "vlance", "virtio"];  // those minivisor creates (spec.devices)
const NIC_COUNT = 10;

let shown = null;  // {vm, nics: the VM's NIC names, removable: the select of them, devices: the part refreshed}

export async function show(vm, box) {
  let info;
  try {
    info = await api("GET", vmPath(vm));
  } catch (e) {
    box.replaceChildren(el("span", {class: "error", role: "alert", text: "Hardware: " + e.message}));
    return;
  }
  shown = {vm, nics: [], removable: el("select", {id: "hw-nic-remove"}), devices: el("div", {id: "hardware-devices"})};
  box.replaceChildren(resourcesForm(vm, info), diskForm(vm), await nicForm(vm), await cdromBar(vm), shown.devices);
  await refresh(vm, box);
}

// The forms stay as they are (with what was typed and the last error); the NICs and the devices are read again.
export async function refresh(vm, box) {
  if (!shown || shown.vm !== vm || !box.contains(shown.devices)) return;
  let info, explained;
  try {
    [info, explained] = await Promise.all([api("GET", vmPath(vm)), api("GET", vmPath(vm, "/explain"))]);
  } catch (e) {
    shown.devices.replaceChildren(el("span", {class: "error", role: "alert", text: "Hardware: " + e.message}));
    return;
  }
  shown.nics = info.nics.map((nic) => nic.name);
  const kept = shown.removable.value;
  shown.removable.replaceChildren(...shown.nics.map((name) => el("option", {value: name, text: name})));
  if (shown.nics.includes(kept)) shown.removable.value = kept;
  shown.devices.replaceChildren(
    el("table", {id: "hardware"}, el("tbody", {}, ...explained.hardware.map((device) =>
      el("tr", {dataset: {device: device.name}}, el("th", {text: device.name}), el("td", {text: device.description}))))),
    el("ul", {class: "warnings"}, ...explained.warnings.map((warning) => el("li", {text: warning}))),
    el("h3", {text: "QEMU command line"}),
    el("pre", {id: "argv", text: explained.argv.join(" ")}));
}

function form(...children) { return el("p", {class: "hw-form"}, ...children, el("span", {class: "error", role: "alert"})); }

function resourcesForm(vm, info) {
  const cpus = el("input", {id: "hw-cpus", type: "number", min: "1", value: String(info.cpus), size: "4"});
  const memory = el("input", {id: "hw-memory", type: "number", min: "4", value: String(info.memory_mib), size: "7"});
  const apply = actionButton("Apply", "set-resources", vm, () =>
    api("POST", vmPath(vm, "/resources"), {cpus: Number(cpus.value), memory_mib: Number(memory.value)}));
  return form(el("label", {}, "CPUs ", cpus), " ", el("label", {}, "Memory (MiB) ", memory), " ", apply,
              " (powered off)");
}

function diskForm(vm) {
  const size = el("input", {id: "hw-disk-size", value: "8G", size: "8", title: "e.g. 512M, 8G"});
  const thick = el("input", {id: "hw-disk-thick", type: "checkbox"});
  const add = actionButton("Add disk", "add-disk", vm, () =>
    api("POST", vmPath(vm, "/disks"), {size: size.value.trim(), thick: thick.checked}));
  return form("New disk ", size, " ", el("label", {}, thick, " thick (allocated now; thin grows as written)"), " ", add,
              " (powered off)");
}

async function nicForm(vm) {
  const network = el("select", {id: "hw-nic-network"}, el("option", {value: "nat", text: "NAT (user-mode)"}),
                     el("option", {value: "none", text: "no network"}));
  try {
    for (const net of await api("GET", "/v1/networks")) network.append(el("option", {value: net.name, text: net.name}));
  } catch { /* the two built-in choices remain */ }
  const model = el("select", {id: "hw-nic-model"}, ...NIC_MODELS.map((m) => el("option", {value: m, text: m})));
  const add = actionButton("Add NIC", "add-nic", vm, () => {
    const free = Array.from({length: NIC_COUNT}, (_, i) => "ethernet" + i).find((name) => !shown.nics.includes(name));
    return api("POST", vmPath(vm, "/nics"), {nic: free || "ethernet" + NIC_COUNT, model: model.value, network: network.value});
  });
  const remove = actionButton("Remove NIC", "remove-nic", vm,
    () => api("DELETE", vmPath(vm, "/nics/" + encodeURIComponent(shown.removable.value))),
    {confirm: "Remove the NIC from {vm}? Its port forwards go with it."});
  return form("New NIC on ", network, " ", model, " ", add, " · ", shown.removable, " ", remove);
}
