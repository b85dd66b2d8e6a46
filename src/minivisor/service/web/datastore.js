// The datastore browser: folders and files with their sizes, uploads (ISOs, disk images) with progress, a
// folder with a specfile registered as it is or imported (a VMware VM's folder: copied in, its disks converted),
// and files deleted (what a VM uses is refused, with the reason).

import {api} from "./api.js";
import {$, el} from "./dom.js";
import {actionButton, refreshVm} from "./main.js";

let folder = "";

function size(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
}

export async function showDatastore(path = folder) {
  const box = $("datastore");
  const error = box.querySelector("#datastore-error");
  try {
    const listing = await api("GET", "/v1/datastore/files?folder=" + encodeURIComponent(JSON.stringify(path)));
    folder = listing.folder;
    const rows = listing.entries.map((entry) => el("tr", {dataset: {file: entry.name, kind: entry.kind}},
      el("td", {}, entry.kind === "folder"
        ? el("button", {class: "link", text: entry.name + "/", onclick: () => showDatastore(join(folder, entry.name))})
        : entry.name),
      el("td", {class: "size", text: size(entry.size)}),
      el("td", {text: new Date(entry.modified * 1000).toLocaleString()}),
      el("td", {}, ...(entry.kind === "file" ? fileButtons(listing, entry.name) : []))));
    const up = folder ? [el("tr", {}, el("td", {}, el("button", {class: "link", text: "../",
      onclick: () => showDatastore(folder.split("/").slice(0, -1).join("/"))})), el("td"), el("td"), el("td"))] : [];
    box.querySelector("#datastore-where").textContent = "/" + folder + "  (" + size(listing.free) + " free of " +
      size(listing.capacity) + ")";
    box.querySelector("#datastore-files").replaceChildren(...up, ...rows);
    error.textContent = "";
  } catch (e) {
    error.textContent = e.message;
  }
}

function join(a, b) { return a ? a + "/" + b : b; }

// A file's actions: a specfile's (below), and Delete (asked first; refused for what a VM uses, and why).
function fileButtons(listing, name) {
  const where = listing.folder;
  const remove = actionButton("Delete", "delete-file", "", async () => {
    await api("POST", "/v1/datastore/files/delete", {folder: where, name});
    await showDatastore(where);
  }, {confirm: "Delete " + (where ? where + "/" : "") + name + " from the datastore? It cannot be undone."});
  remove.dataset.file = name;
  const buttons = /\.vmx$/i.test(name) ? specfileButtons(listing.path, name) : [];
  return [...buttons, " ", remove, el("span", {class: "error", role: "alert"})];
}

// A specfile of the datastore: "Register existing .vmx" (a VM not in the inventory yet, its files where they
// are) or "Import" (its folder copied in as a new VM under the name asked, each disk checked and converted).
function specfileButtons(where, vmx) {
  const register = actionButton("Register", "register", "", async () => {
    const vm = await api("POST", "/v1/vms/register", {vmx_path: where + "/" + vmx});
    await refreshVm(vm.name);
  });
  const importing = actionButton("Import…", "import", "", async () => {
    const name = window.prompt("Import the VM in folder " + where.split("/").pop() + " as:", vmx.replace(/\.vmx$/i, ""));
    if (!name) return;
    const vm = await api("POST", "/v1/vms/import", {folder: where, name: name.trim()});
    await refreshVm(vm.name);
    await showDatastore();
  });
  for (const button of [register, importing]) button.dataset.vmx = vmx;
  return [register, " ", importing];
}

// XMLHttpRequest, not fetch: only it reports an upload's progress.
export function send(file, target, progress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", "/v1/datastore/files/" + encodeURIComponent(target) + "/" + encodeURIComponent(file.name));
    request.setRequestHeader("X-Minivisor-CSRF", "1");
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = e.loaded / e.total; };
    request.onload = () => {
      let data = null;
      try { data = JSON.parse(request.responseText); } catch { /* described below */ }
      if (request.status === 201) resolve(data);
      else reject(new Error(data && data.error ? data.error.message + (data.error.hint ? " (" + data.error.hint + ")" : "")
                                                : "the service answered " + request.status));
    };
    request.onerror = () => reject(new Error("the upload was cut short"));
    request.send(file);
  });
}

export function setUp() {
  const box = $("datastore");
  const target = el("input", {id: "upload-folder", value: "iso", size: "10"});
  const file = el("input", {id: "upload-file", type: "file", accept: ".iso,.img,.vmdk,.qcow2"});
  const progress = el("progress", {id: "upload-progress", max: "1", value: "0"});
  const error = el("span", {class: "error", role: "alert", id: "upload-error"});
  const button = el("button", {text: "Upload", dataset: {action: "upload"}});
  button.addEventListener("click", async () => {
    error.textContent = "";
    if (!file.files.length) { error.textContent = "Upload: choose a file first."; return; }
    button.disabled = true;
    try {
      await send(file.files[0], target.value.trim(), progress);
      await showDatastore(target.value.trim());
    } catch (e) {
      error.textContent = "Upload: " + e.message;
    } finally {
      button.disabled = false;
    }
  });
  box.replaceChildren(el("h2", {text: "Datastore"}), el("p", {id: "datastore-where"}),
    el("span", {class: "error", role: "alert", id: "datastore-error"}),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {text: "Name"}), el("th", {text: "Size"}),
                                           el("th", {text: "Modified"}), el("th"))), el("tbody", {id: "datastore-files"})),
    el("p", {}, "Upload into folder ", target, " ", file, " ", button, " ", progress, error));
  return showDatastore("");
}
