// A VM's snapshot tree, drawn as a tree with "You are here" under the snapshot the VM stands on (as VMware's
// snapshot manager and Proxmox's "NOW"): take, revert, delete, and a linked or full clone from any snapshot.

import {api, vmPath} from "./api.js";
import {el} from "./dom.js";
import {actionButton, refreshVm} from "./main.js";

function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : ""; }

function here() {
  return el("li", {class: "here", id: "you-are-here"}, el("div", {text: "▶ You are here"}));
}

function node(vm, snapshot) {
  const id = String(snapshot.uid);
  const line = el("div", {class: "snapshot-line"},
    el("span", {class: "snapshot-name", text: snapshot.name}), " ",
    el("small", {text: (snapshot.memory ? "with memory, " : "") + when(snapshot.created)}), " ",
    actionButton("Revert", "revert", vm,
      () => api("POST", vmPath(vm, "/snapshots/revert"), {snapshot: id}),
      {confirm: "Revert {vm} to snapshot “" + snapshot.name + "”? What it has now that the snapshot lacks is lost."}),
    actionButton("Delete", "delete-snapshot", vm,
      () => api("POST", vmPath(vm, "/snapshots/delete"), {snapshot: id}),
      {confirm: "Delete snapshot “" + snapshot.name + "” of {vm}?"}),
    cloneButton("Linked clone", true, vm, snapshot), cloneButton("Full clone", false, vm, snapshot),
    el("span", {class: "error", role: "alert"}));
  if (snapshot.description) line.title = snapshot.description;
  return el("li", {dataset: {snapshot: snapshot.name, uid: id}}, line);
}

function cloneButton(label, linked, vm, snapshot) {
  return actionButton(label, linked ? "linked-clone" : "full-clone", vm, async () => {
    const target = window.prompt("Name of the new VM (" + label.toLowerCase() + " of " + vm + " at “" +
                                 snapshot.name + "”):", vm + "-clone");
    if (!target) return;
    await api("POST", vmPath(vm, "/clone"), {target, linked, snapshot: String(snapshot.uid)});
    await refreshVm(target);  // the new VM's row (the clone's events name the source)
  });
}

// The depth-first list (each with its depth) as nested lists; "You are here" is the last child of the current one.
function drawTree(vm, snapshots) {
  const root = el("ul", {class: "tree", id: "snapshot-tree"});
  const open = [root];  // the list at each depth
  let placed = false;
  for (const snapshot of snapshots) {
    open.length = snapshot.depth + 1;
    const item = node(vm, snapshot);
    open[snapshot.depth].append(item);
    const children = el("ul");
    item.append(children);
    open.push(children);
    if (snapshot.current) { children.append(here()); placed = true; }
  }
  if (!placed) root.append(here());  // no snapshot yet, or the VM left the tree
  for (const list of root.querySelectorAll("ul")) {  // keep "You are here" after the children taken later
    const mark = list.querySelector(":scope > #you-are-here");
    if (mark) list.append(mark);
  }
  return root;
}

function takeForm(vm) {
  const name = el("input", {id: "snapshot-name", placeholder: "snapshot name", size: "24"});
  // A running VM's snapshot holds its memory unless asked not to (the API's default)
  const diskOnly = el("input", {type: "checkbox", id: "snapshot-disks-only"});
  const take = actionButton("Take snapshot", "take-snapshot", vm, () =>
    api("POST", vmPath(vm, "/snapshots"), {snapshot: name.value.trim(), ...(diskOnly.checked ? {memory: false} : {})}));
  return el("div", {class: "take"}, name, " ", el("label", {}, diskOnly, " disks only (a running VM's memory too if not)"), " ", take,
            el("span", {class: "error", role: "alert"}));
}

export async function show(vm, box) {
  box.replaceChildren(takeForm(vm), el("div", {id: "snapshots"}));
  await refresh(vm, box);
}

export async function refresh(vm, box) {
  const where = box.querySelector("#snapshots");
  if (!where) return;
  try {
    where.replaceChildren(drawTree(vm, await api("GET", vmPath(vm, "/snapshots"))));
  } catch (e) {
    where.replaceChildren(el("span", {class: "error", role: "alert", text: "Snapshots: " + e.message}));
  }
}
