// The task list: the operations the service runs and has run (GET /v1/tasks, then its `task` events), whoever
// asked for them (this page, another one, the CLI): running with a progress bar, done in how long, or failed and why.

import {api} from "./api.js";
import {$, el} from "./dom.js";

const MAX_SHOWN = 150;  // the service keeps 100 that ended, and those running
const rows = new Map();  // task id -> its <tr>

// The core method each task runs, in words (another one is shown by its name)
const LABELS = {
  start_vm: "Power on", stop_vm: "Stop", reset_vm: "Reset", pause_vm: "Pause", resume_vm: "Resume",
  create_vm: "Create", register_vm: "Register", unregister_vm: "Unregister", delete_vm: "Delete",
  clone_vm: "Clone", import_vm: "Import", disk_convert: "Convert disk", disk_create: "Create disk",
  disk_resize: "Resize disk", vm_disk_resize: "Resize disk", snapshot_take: "Take snapshot",
  snapshot_revert: "Revert to snapshot", snapshot_delete: "Delete snapshot", put_specfile: "Save specfile",
  cdrom: "CD-ROM", add_nic: "Add NIC", remove_nic: "Remove NIC", set_nic: "Change NIC",
  set_resources: "CPUs and memory", add_disk: "Add disk", upload: "Upload", datastore_delete: "Delete file in",
  copy_to_guest: "Copy to guest", copy_from_guest: "Copy from guest", set_autostart: "Autostart", set_ha: "HA",
  migrate_vm: "Migrate to",
};

// The list as the service has it. While the event stream runs, a task it has shown ended stays so (the list
// may have been read before); `anew` (the stream has stopped: the service may have restarted) forgets the rows.
export async function showTasks(anew = false) {
  const tasks = await api("GET", "/v1/tasks");
  if (anew) {
    rows.clear();
    $("tasks").replaceChildren();
  }
  for (const task of tasks.reverse()) {  // oldest first: each new one goes on top
    if (rows.get(task.id)?.dataset.state !== "running" || task.state !== "running") showTask(task);
  }
}

// One task as it is now: a new row on top, or its row brought up to date.
export function showTask(task) {
  const row = el("tr", {dataset: {task: String(task.id), state: task.state, operation: task.operation}},
    el("td", {text: new Date(task.started * 1000).toLocaleTimeString()}),
    el("td", {text: (LABELS[task.operation] || task.operation) + (task.subject ? " " + task.subject.split("/").pop() : ""),
              title: task.subject || ""}),  // a path (an import's folder) by its last name; the whole on hover
    el("td", {text: task.vm || ""}), status(task));
  const old = rows.get(task.id);
  if (old) old.replaceWith(row); else $("tasks").prepend(row);
  rows.set(task.id, row);
  while (rows.size > MAX_SHOWN) {
    const oldest = Math.min(...rows.keys());
    rows.get(oldest).remove();
    rows.delete(oldest);
  }
}

function status(task) {
  const cell = el("td", {class: "task-status"});
  if (task.state === "running") {
    const bar = el("progress", {max: "100"});  // without a value: the operation does not say how far it is
    if (task.progress !== null) bar.value = task.progress;
    const done = task.progress === null ? "" : " " + Math.floor(task.progress) + " %";
    cell.append(bar, "running" + done + (task.note ? " · " + task.note : "") + "…");
    return cell;
  }
  const took = (task.ended - task.started).toFixed(1) + " s";
  cell.textContent = task.state === "failed" ? "failed after " + took + ": " + task.error : "done in " + took;
  return cell;
}
