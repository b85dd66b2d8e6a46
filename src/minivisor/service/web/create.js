// The "New VM" wizard: name, guest OS, CPUs, memory, an empty disk (thin or thick), a network, the firmware and a
// CD-ROM drive, then POST /v1/vms; an ISO chosen from this computer is uploaded into the new VM's folder and
// inserted (POST /v1/vms/{name}/cdrom), ready to install from.

import {api} from "./api.js";
import {$, el} from "./dom.js";
import {actionButton, refreshVm} from "./main.js";
import {send} from "./datastore.js";

const GUEST_OSES = ["other-64", "otherlinux-64", "debian12-64", "ubuntu-64", "rhel9-64", "windows2019srv-64",
                    "windows11-64", "freebsd13-64"];

function field(label, input) { return el("label", {class: "field"}, el("span", {text: label}), input); }

export async function showWizard() {
  const box = $("create");
  const name = el("input", {id: "new-name", required: "", size: "20"});
  const guestOs = el("input", {id: "new-guest-os", value: "other-64", list: "guest-oses", size: "20"});
  const oses = el("datalist", {id: "guest-oses"}, ...GUEST_OSES.map((os) => el("option", {value: os})));
  const cpus = el("input", {id: "new-cpus", type: "number", min: "1", value: "1", size: "4"});
  const memory = el("input", {id: "new-memory", type: "number", min: "16", step: "16", value: "512", size: "6"});
  const disk = el("input", {id: "new-disk", value: "8G", size: "8", title: "e.g. 512M, 8G; empty: no disk"});
  const thick = el("input", {id: "new-thick", type: "checkbox"});
  const firmware = el("select", {id: "new-firmware"}, el("option", {value: "bios", text: "BIOS (SeaBIOS)"}),
                      el("option", {value: "efi", text: "UEFI (OVMF)"}));
  const cdrom = el("input", {id: "new-cdrom", type: "checkbox", checked: ""});
  const iso = el("input", {id: "new-iso", type: "file", accept: ".iso"});
  const progress = el("progress", {id: "new-iso-progress", max: "1", value: "0"});
  const network = el("select", {id: "new-network"}, el("option", {value: "nat", text: "NAT (user-mode)"}),
                     el("option", {value: "none", text: "no network"}));
  try {
    for (const net of await api("GET", "/v1/networks")) network.append(el("option", {value: net.name, text: net.name}));
  } catch { /* the two built-in choices remain */ }
  const create = actionButton("Create", "create", "", async () => {
    const body = {name: name.value.trim(), guest_os: guestOs.value.trim(), cpus: Number(cpus.value),
                  memory_mib: Number(memory.value), network: network.value, firmware: firmware.value,
                  thick: thick.checked, cdrom: cdrom.checked || iso.files.length > 0};
    if (disk.value.trim()) body.disk_size = disk.value.trim();
    const vm = await api("POST", "/v1/vms", body);
    await refreshVm(vm.name);
    if (iso.files.length) {  // into the VM's own folder, the one place its drives may open files
      const uploaded = await send(iso.files[0], vm.name, progress);
      const listing = await api("GET", "/v1/datastore/files?folder=" + encodeURIComponent(JSON.stringify(vm.name)));
      await api("POST", "/v1/vms/" + encodeURIComponent(vm.name) + "/cdrom", {image: listing.path + "/" + uploaded.name});
      await refreshVm(vm.name);
    }
    box.hidden = true;
  });
  const cancel = el("button", {type: "button", text: "Cancel", onclick: () => { box.hidden = true; }});
  box.replaceChildren(el("h2", {text: "New virtual machine"}),
    field("Name", name), field("Guest OS", guestOs), oses, field("CPUs", cpus), field("Memory (MiB)", memory),
    field("Disk", el("span", {}, disk, " ", el("label", {}, thick, " thick (allocated now)"))),
    field("Network", network), field("Firmware", firmware),
    field("CD-ROM drive", el("span", {}, cdrom, " ", el("label", {}, "insert ", iso, " ", progress))),
    el("div", {class: "buttons"}, create, " ", cancel, el("span", {class: "error", role: "alert"})));
  box.hidden = false;
  name.focus();
}
