// One VM's page under the inventory: its consoles and snapshots, in tabs.

import {$, el} from "./dom.js";

// [label, module, its function that shows the tab]; a module may export close() and refresh(vm, box)
const TABS = [["Serial console", "./consoles.js", "showSerial"], ["Screen", "./consoles.js", "showScreen"],
              ["Snapshots", "./snapshots.js", "show"], ["Graphs", "./graphs.js", "show"],
              ["Network", "./networks.js", "show"], ["Hardware", "./hardware.js", "show"],
              ["Specfile", "./specfile.js", "show"]];
let current = null;  // {vm, module, box}
let opened = 0;  // how many times a tab was opened: a tab whose module came after a later click's is dropped

export async function openDetail(vm, tabIndex = 0) {
  const opening = ++opened;
  current?.module?.close?.();
  current = null;
  const detail = $("detail");
  const box = el("div", {class: "tab-body"});
  const tabs = el("div", {class: "tabs"}, ...TABS.map(([label], i) =>
    el("button", {text: label, dataset: {tab: label.split(" ")[0].toLowerCase()}, "aria-selected": String(i === tabIndex),
                  onclick: () => openDetail(vm, i)})));
  detail.replaceChildren(el("h2", {text: vm}), tabs, box);
  detail.dataset.vm = vm;
  detail.hidden = false;
  const [, path, show] = TABS[tabIndex];
  const module = await import(path);
  if (opening !== opened) return;  // another tab was clicked while this one's code loaded: that one is shown
  current = {vm, module, box};
  await module[show](vm, box);
}

// Refreshes run one after another: two at once (a click's and an event's) could paint the older answers last.
let refreshing = Promise.resolve();

// The open tab, whatever VM it shows (after events may have been missed).
export function refreshOpenDetail() {
  return current ? refreshDetail(current.vm) : refreshing;
}

export function refreshDetail(vm) {
  if (!(current && current.vm === vm && current.module.refresh)) return refreshing;
  const {module, box} = current;
  refreshing = refreshing.then(() => module.refresh(vm, box)).catch(() => {});  // each tab shows its own errors
  return refreshing;
}
