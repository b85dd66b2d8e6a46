// The page: log in once, then the inventory of every VM, kept current from the event stream, with its actions.

import {api, follow, vmPath, whenLoggedOut} from "./api.js";
import {haControls, migrateControls, replicateControls, showCluster} from "./cluster.js";
import {$, el} from "./dom.js";
import {openDetail, refreshDetail, refreshOpenDetail} from "./detail.js";
import {setUp as setUpDatastore, showDatastore} from "./datastore.js";
import {showNetworks} from "./networks.js";
import {showTask, showTasks} from "./tasks.js";

const rows = new Map();  // VM name -> its <tr>
const FOLDER_EVENTS = new Set(["created", "registered", "deleted", "unregistered", "migratedIn"]);
const FOLDER_TASKS = new Set(["clone_vm", "import_vm"]);  // they make a VM and its folder, and say so only as tasks

// What each state offers, in order; `confirm` asks first (it cannot be undone or loses the guest's state).
const ACTIONS = {
  poweredOff: [["Power on", "start"], ["Delete", "delete", {confirm: "Delete VM {vm} and every file in its folder?"}]],
  running: [["Shut down", "shutdown"], ["Power off", "poweroff", {confirm: "Power off {vm}? The guest loses what it has not written."}],
            ["Reset", "reset", {confirm: "Reset {vm}? The guest restarts at once."}], ["Pause", "pause"]],
  paused: [["Resume", "resume"], ["Power off", "poweroff", {confirm: "Power off {vm}? The guest loses what it has not written."}]],
};
const CALLS = {  // action -> [method, path after /v1/vms/<name>, body]
  start: ["POST", "/start", {}], shutdown: ["POST", "/stop", {hard: false}], poweroff: ["POST", "/stop", {hard: true}],
  reset: ["POST", "/reset", {}], pause: ["POST", "/pause", {}], resume: ["POST", "/resume", {}],
  delete: ["DELETE", "", undefined],
};

// A button that runs one API call; what goes wrong is said next to it, in the VM's row.
export function actionButton(label, action, vm, call, options = {}) {
  const button = el("button", {text: label, dataset: {action, vm}});
  button.addEventListener("click", async () => {
    const error = button.parentElement.querySelector(".error");
    if (error) error.textContent = "";
    if (options.confirm && !window.confirm(options.confirm.replace("{vm}", vm))) return;
    button.disabled = true;
    try {
      await call();
    } catch (e) {
      const where = button.parentElement.querySelector(".error");
      if (where) where.textContent = label + ": " + e.message;
    } finally {
      button.disabled = false;
    }
    if (vm) await refreshVm(vm);
  });
  return button;
}

// The host's load and memory, and how many VMs run, from /v1/metrics every few seconds
const HOST_EVERY = 5000;
let hostTimer = null;

async function showHost() {
  try {
    const {host} = await api("GET", "/v1/metrics");
    const gib = (bytes) => (bytes / 1073741824).toFixed(1) + " GiB";
    $("host").textContent = host.cpus + " CPUs, load " + host.load_average.map((l) => l.toFixed(2)).join(" ") +
      " · memory " + gib(host.memory_available_bytes) + " free of " + gib(host.memory_total_bytes) +
      " · " + host.vms_running + " VM" + (host.vms_running === 1 ? "" : "s") + " running";
    $("host").dataset.running = String(host.vms_running);
  } catch { /* logged out: the login says so */ }
}

function memory(mib) { return mib >= 1024 && mib % 1024 === 0 ? mib / 1024 + " GiB" : mib + " MiB"; }

function renderRow(vm) {
  let row = rows.get(vm.name);
  if (!row) {
    row = el("tr", {dataset: {vm: vm.name}});
    rows.set(vm.name, row);
    const after = [...rows.keys()].sort().find((name) => name > vm.name);
    $("vms").insertBefore(row, after ? rows.get(after) : null);
  }
  const error = row.querySelector(".error");  // an error stays on screen until the next click
  const actions = el("td", {class: "actions"});
  for (const [label, action, options] of ACTIONS[vm.state] || []) {
    const [method, path, body] = CALLS[action];
    actions.append(actionButton(label, action, vm.name, () => api(method, vmPath(vm.name, path), body), options));
  }
  if (vm.state === "running") actions.append(...migrateControls(vm.name));
  actions.append(...haControls(vm));
  actions.append(...replicateControls(vm));
  const firstTab = vm.state === "poweredOff" ? 2 : 0;  // a powered-off VM has no console: its snapshots
  actions.append(el("button", {text: "Open", dataset: {action: "open", vm: vm.name},
                               onclick: () => openDetail(vm.name, firstTab)}));
  actions.append(error || el("span", {class: "error", role: "alert"}));
  const state = el("td", {class: "state", dataset: {state: vm.state}, text: vm.state_reason ? vm.state + " (" + vm.state_reason + ")" : vm.state});
  if (vm.state_hint) state.title = vm.state_hint;
  const disks = el("td", {class: "disks", text: diskLines(vm, []).join("\n")});
  const nics = el("td", {class: "nics", text: nicLines(vm, []).join("\n")});
  row.replaceChildren(
    el("td", {class: "name", text: vm.name, title: vm.display_name}), state, el("td", {text: vm.guest_os}),
    el("td", {text: vm.cpus}), el("td", {class: "memory", text: memory(vm.memory_mib)}), disks, nics,
    el("td", {class: "host cluster-only", text: vm.host || ""}), actions);
  fillUsage(vm, disks, nics);
}

// What the specfile says is shown at once; what the disks hold and the addresses the NICs have follow, from
// GET .../disks (used / provisioned, the whole chain of layers) and GET .../addresses (reserved, leased, the
// guest's own): a VM whose disks cannot be read keeps the lines it has.
async function fillUsage(vm, disksCell, nicsCell) {
  const [disks, addresses] = await Promise.all([api("GET", vmPath(vm.name, "/disks")).catch(() => null),
                                                api("GET", vmPath(vm.name, "/addresses")).catch(() => null)]);
  if (disks) disksCell.textContent = diskLines(vm, disks).join("\n");
  if (addresses) nicsCell.textContent = nicLines(vm, addresses).join("\n");
  disksCell.dataset.filled = String(Boolean(disks));
  nicsCell.dataset.filled = String(Boolean(addresses));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log2(Math.max(n, 1)) / 10));
  return (n / 1024 ** i).toFixed(i && n % 1024 ** i ? 1 : 0) + " " + units[i];
}

function diskLines(vm, used) {
  return vm.disks.map((d) => {
    const found = used.find((u) => u.node === d.node);
    const usage = found ? " " + bytes(found.chain_allocated) + " / " + bytes(found.virtual_size) : "";
    return d.node + " " + (d.file || d.kind) + usage;
  });
}

function nicLines(vm, addresses) {
  return vm.nics.map((n) => {
    const found = addresses.find((a) => a.nic === n.name) || {};
    const address = found.address || n.address;
    const held = address ? " " + address + (found.lease ? " (" + found.lease + ")" : "") : "";
    const guest = found.guest?.length ? " · guest: " + found.guest.join(", ") : "";
    return n.name + " → " + n.network + held + guest;
  });
}

function removeRow(name) {
  rows.get(name)?.remove();
  rows.delete(name);
}

export async function refreshVm(name) {
  try {
    renderRow(await api("GET", vmPath(name)));
  } catch (e) {
    if (e.status === 404) removeRow(name);
  }
  refreshDetail(name);
}

async function refreshAll() {
  const vms = await api("GET", "/v1/vms");
  const names = new Set(vms.map((vm) => vm.name));
  for (const name of [...rows.keys()]) if (!names.has(name)) removeRow(name);
  for (const vm of vms) renderRow(vm);
  document.body.dataset.loaded = "yes";
  requestAnimationFrame(() => performance.mark("inventory-painted"));  // bench/web.py reads it
}

function logEvent(event) {
  const line = new Date(event.time * 1000).toLocaleTimeString() + "  " + (event.vm || "") + "  " + event.type +
    (event.reason ? "  (" + event.reason + ")" : "");
  $("events").textContent = line + "\n" + $("events").textContent.slice(0, 20000);
}

async function followEvents() {
  for (;;) {
    try {
      await follow((event) => {
        if (event.type === "task") {  // the VM's own events follow, if it has any
          showTask(event.task);
          if (event.task.state === "done" && FOLDER_TASKS.has(event.task.operation)) { refreshAll(); showDatastore(); }
          if (event.task.state !== "running" && event.task.operation === "migrate_vm") {  // the VM left, or not
            showCluster();
            showDatastore();
          }
          return;
        }
        logEvent(event);
        if (event.vm) refreshVm(event.vm); else refreshAll();
        if (FOLDER_EVENTS.has(event.type)) showDatastore();  // a VM's folder came or went
      });
    } catch { /* logged out, or the service went away */ }
    if ($("main").hidden) return;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    try {  // the stream missed events meanwhile
      await refreshAll();
      await refreshOpenDetail();
      await showTasks(true);
    } catch { return; }
  }
}

function showLogin(message = "") {
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("token").focus();
}

async function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  followEvents();  // subscribed before the list is read: no change falls between the two
  await showCluster();  // first: a running VM's row offers the hosts it may move to
  await refreshAll();
  await showTasks();
  await setUpDatastore();
  await showNetworks();
  await showHost();
  hostTimer ??= setInterval(async () => {
    if ($("main").hidden) return;
    showHost();
    if (await showCluster()) await refreshAll();  // a host came or went: the Migrate choices change
  }, HOST_EVERY);
}

whenLoggedOut(() => showLogin("Your session has ended: log in again."));

$("login").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("POST", "/v1/session", {token: $("token").value.trim()});
  } catch (error) {
    showLogin(error.message);
    return;
  }
  $("token").value = "";
  await showMain();
});

$("new-vm").addEventListener("click", async () => (await import("./create.js")).showWizard());

$("logout").addEventListener("click", async () => {
  try { await api("DELETE", "/v1/session"); } finally { rows.clear(); $("vms").replaceChildren(); showLogin(); }
});

try {
  await api("GET", "/v1/session");
  await showMain();
} catch {
  showLogin();
}
