// The cluster this host is in (GET /v1/cluster): every host, live or not, with its free memory, CPUs, running VMs
// and versions, the VMs marked HA and the replications; a running VM's Migrate action to a live other host (POST
// /v1/vms/<name>/migrate: a task of the service, its progress in the task list); every VM's HA switch (PUT
// /v1/vms/<name>/ha); a running VM's Replicate action, and a replicated VM's end of it (POST
// /v1/vms/<name>/replicate, /replicate/off). On a single host none of it shows (the body has no data-cluster).

import {api, vmPath} from "./api.js";
import {$, el} from "./dom.js";
import {actionButton} from "./main.js";

let status = null;  // the cluster as last read; null on a single host

// The hosts a running VM may move to: the live ones but this.
function migrationTargets() {
  return status ? status.hosts.filter((host) => host.live && !host.this).map((host) => host.name) : [];
}

// Read the cluster and show it; returns whether the hosts a VM may move to changed (the rows' actions then do).
export async function showCluster() {
  const before = migrationTargets().join(" ");
  const box = $("cluster");
  try {
    status = await api("GET", "/v1/cluster");
  } catch (e) {
    status = null;
    if (e.type === "ClusterError") {  // a single host: no cluster to show
      delete document.body.dataset.cluster;
      box.replaceChildren();
    } else {  // a member that cannot read the cluster now (etcd out of reach): say so
      document.body.dataset.cluster = "yes";
      box.replaceChildren(el("h2", {text: "Cluster"}), el("span", {class: "error", role: "alert", text: e.message}));
    }
    return before !== "";
  }
  document.body.dataset.cluster = "yes";
  const mib = (n) => (n >= 1024 ? (n / 1024).toFixed(1) + " GiB" : n + " MiB");
  const rows = status.hosts.map((host) => el("tr", {dataset: {host: host.name, live: String(host.live)}},
    el("td", {class: "name", text: host.name + (host.this ? " (this host)" : "")}),
    el("td", {class: "live", text: host.live ? "yes" : "no"}),
    el("td", {class: "memory", text: host.live ? mib(host.memory_free_mib) + " of " + mib(host.memory_total_mib) : ""}),
    el("td", {class: "cpus", text: host.live ? String(host.cpus) : ""}),
    el("td", {class: "vms", text: (host.vms || []).join(", ")}),
    el("td", {class: "versions", text: host.live ? "minivisor " + host.minivisor + ", QEMU " + host.qemu : ""})));
  const ha = status.ha.map((vm) => vm.vm + " (" + (vm.owner ? "on " + vm.owner : "not running") + ")");
  const replicas = status.replicas.map((r) => r.vm + " → " + r.target + (r.failed_over_to
    ? " (failed over to " + r.failed_over_to + ")"
    : " (" + (r.last_copy ? "last good copy " + new Date(r.last_copy * 1000).toLocaleString() + ", generation " +
              r.generation : "no good copy yet") + ", every " + every(r.every) + ")" +
    (r.behind ? " BEHIND: its rounds fail" : "")));
  box.replaceChildren(el("h2", {text: "Cluster"}),
    el("p", {text: "etcd " + status.etcd + " at " + status.endpoints.join(", ") + " · lease " + status.ttl + " s"}),
    el("p", {id: "cluster-ha", text: "HA (restarted on another host when theirs dies): " + (ha.join(", ") || "none")}),
    el("p", {id: "cluster-replicas", text: "Replicated (disks copied to a replica on another host): " +
                                           (replicas.join(", ") || "none")}),
    el("table", {id: "cluster-hosts"},
       el("thead", {}, el("tr", {}, ...["Host", "Live", "Free memory", "CPUs", "Running VMs", "Versions"]
         .map((h) => el("th", {text: h})))),
       el("tbody", {}, ...rows)));
  return migrationTargets().join(" ") !== before;
}

// A VM's HA switch in a cluster: "HA on" marks it (another host that has it registered powers it on when its
// host dies), "HA off" unmarks it; nothing on a single host.
export function haControls(vm) {
  if (!status) return [];
  const marked = status.ha.some((entry) => entry.uuid === vm.uuid);
  return [actionButton(marked ? "HA off" : "HA on", "ha", vm.name, async () => {
    await api("PUT", vmPath(vm.name, "/ha"), {enabled: !marked});
    await showCluster();  // the HA list, which the row's switch reads
  })];
}

// A running VM's Migrate action: the live other hosts to choose from, and the button; nothing without one.
export function migrateControls(vm) {
  const targets = migrationTargets();
  if (!targets.length) return [];
  const choice = el("select", {class: "migrate-host", dataset: {vm}, "aria-label": "host to migrate " + vm + " to"},
                    ...targets.map((name) => el("option", {value: name, text: name})));
  const confirm = "Move {vm} to another host, with its disks? It is removed here once it runs there.";
  const go = actionButton("Migrate", "migrate", vm, () => api("POST", vmPath(vm, "/migrate"), {host: choice.value}),
                          {confirm});
  return [choice, go];
}

// How often a replication round runs: the choices offered, in seconds (vSphere Replication's RPOs start at 5 min).
const EVERY = [[300, "every 5 min"], [900, "every 15 min"], [3600, "every hour"]];

function every(seconds) {
  return seconds % 3600 === 0 ? seconds / 3600 + " h" : seconds % 60 === 0 ? seconds / 60 + " min" : seconds + " s";
}

// A VM's replication (vm replicate): a running VM's disks copied in rounds to a replica on a live other host (HA
// then powers the replica on if the VM's host dies), or, replicated already, where to and the button that ends it.
export function replicateControls(vm) {
  if (!status) return [];
  const replica = status.replicas.find((r) => r.uuid === vm.uuid && !r.failed_over_to);
  if (replica) {
    return [el("span", {class: "replica", dataset: {vm: vm.name, behind: String(replica.behind)},
                        text: "replica on " + replica.target + (replica.behind ? " (behind)" : "")}),
            actionButton("Stop replicating", "replicate-off", vm.name, async () => {
              await api("POST", vmPath(vm.name, "/replicate/off"));
              await showCluster();  // the replications, which the row reads
            }, {confirm: "Stop replicating {vm}? Host " + replica.target + " removes its replica."})];
  }
  const targets = migrationTargets();
  if (vm.state !== "running" || !targets.length) return [];
  const host = el("select", {class: "replicate-host", dataset: {vm: vm.name}, "aria-label": "host to keep a replica of " + vm.name},
                  ...targets.map((name) => el("option", {value: name, text: name})));
  const often = el("select", {class: "replicate-every", dataset: {vm: vm.name}, "aria-label": "how often to copy " + vm.name},
                   ...EVERY.map(([seconds, label]) => el("option", {value: String(seconds), text: label})));
  return [host, often, actionButton("Replicate", "replicate", vm.name, async () => {
    await api("POST", vmPath(vm.name, "/replicate"), {host: host.value, every: Number(often.value)});
    await showCluster();
  })];
}
