// One VM's page under the inventory: its consoles and snapshots, in tabs.

import {$, el} from "./dom.js";

const TABS = [];  // [label, module path]: each module exports show(vm, box) and, optionally, refresh(vm, box)
let current = null;  // {vm, tab, module, box}

export function addTab(label, path) { TABS.push([label, path]); }

export async function openDetail(vm, tabIndex = 0) {
  current?.module?.close?.();
  const detail = $("detail");
  const box = el("div", {class: "tab-body"});
  const tabs = el("div", {class: "tabs"}, ...TABS.map(([label], i) =>
    el("button", {text: label, dataset: {tab: label.toLowerCase()}, "aria-selected": String(i === tabIndex),
                  onclick: () => openDetail(vm, i)})));
  detail.replaceChildren(el("h2", {text: vm}), tabs, box);
  detail.dataset.vm = vm;
  detail.hidden = false;
  if (!TABS.length) return;
  const module = await import(TABS[tabIndex][1]);
  current = {vm, module, box};
  await module.show(vm, box);
}

export function refreshDetail(vm) {
  if (current && current.vm === vm) current.module.refresh?.(vm, current.box);
}
