// A VM's hardware as minivisor makes it: each virtual device and why, the warnings, and the exact QEMU command
// line (GET /v1/vms/{name}/explain, what `minivisor vm explain` prints).

import {api, vmPath} from "./api.js";
import {el} from "./dom.js";

export async function show(vm, box) {
  let explained;
  try {
    explained = await api("GET", vmPath(vm, "/explain"));
  } catch (e) {
    box.replaceChildren(el("span", {class: "error", role: "alert", text: "Hardware: " + e.message}));
    return;
  }
  box.replaceChildren(
    el("table", {id: "hardware"}, el("tbody", {}, ...explained.hardware.map((device) =>
      el("tr", {dataset: {device: device.name}}, el("th", {text: device.name}), el("td", {text: device.description}))))),
    el("ul", {class: "warnings"}, ...explained.warnings.map((warning) => el("li", {text: warning}))),
    el("h3", {text: "QEMU command line"}),
    el("pre", {id: "argv", text: explained.argv.join(" ")}));
}
