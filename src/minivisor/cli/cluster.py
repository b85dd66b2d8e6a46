"""``minivisor cluster ...``: this host in a cluster of minivisor hosts on etcd."""

from __future__ import annotations

from . import JSON, arg, command, hv, print_json, say

ETCD = arg("--etcd", required=True, metavar="URL[,URL...]",
           help="etcd's client URLs, e.g. http://10.0.0.1:2379,http://10.0.0.2:2379.")
NAME = arg("--name", metavar="HOST", help="This host's name in the cluster [default: its host name].")
RESTART_HINT = "its service (minivisor serve) keeps it a live member"


@command("cluster init", ETCD, NAME,
         arg("--ttl", type=int, metavar="SECONDS",
             help="Every member's lease: a host that cannot renew it for 0.6 of it powers its VMs off, and "
                  "after all of it another host may run them [default: 10]."),
         JSON)
def cluster_init(etcd: str, name: str | None, ttl: int | None, as_json: bool) -> None:
    joined = hv().cluster_init(etcd, name=name, ttl=ttl)
    print_json(joined) if as_json else say(f"made a cluster (lease TTL {joined['ttl']} s) and joined it as host "
                                           f"{joined['host']}; {RESTART_HINT}")


@command("cluster join", ETCD, NAME, JSON)
def cluster_join(etcd: str, name: str | None, as_json: bool) -> None:
    joined = hv().cluster_join(etcd, name=name)
    print_json(joined) if as_json else say(f"joined the cluster as host {joined['host']}; {RESTART_HINT}")


@command("cluster status", JSON)
def cluster_status(as_json: bool) -> None:
    status = hv().cluster_status()
    if as_json:
        return print_json(status)
    from ..units import human_size
    from .output import table

    say(f"cluster on etcd {status['etcd']} at {','.join(status['endpoints'])}, lease TTL {status['ttl']} s")
    table(("HOST", "LIVE", "FREE MEMORY", "CPUS", "VMS", "MINIVISOR", "QEMU"),
          [(host["name"] + (" *" if host["this"] else ""), "yes" if host["live"] else "no",
            human_size(host["memory_free_mib"] << 20) + " of " + human_size(host["memory_total_mib"] << 20)
            if host["live"] else "-", host.get("cpus", "-"), ", ".join(host.get("vms", ())) or "-",
            host.get("minivisor", "-"), host.get("qemu", "-")) for host in status["hosts"]])
    if status["ha"]:
        say("HA (restarted elsewhere when their host dies): " + ", ".join(
            f"{vm['vm']} ({'on ' + vm['owner'] if vm['owner'] else 'not running'}; "
            + (f"can restart on {', '.join(vm['restarts_on'])})" if vm["restarts_on"]
               else "no other live host can restart it: register it on one, or vm replicate it)")
            for vm in status["ha"]))
    if status["replicas"]:
        from .output import replica_state

        say("Replicated (vm replicate):")
        table(("VM", "FROM", "REPLICA"), [(item["vm"], item["source"], replica_state(item))
                                           for item in status["replicas"]])


@command("cluster leave", arg("--force", action="store_true",
                              help="Forget the cluster here even if etcd cannot be told (it keeps this host listed)."),
         JSON)
def cluster_leave(force: bool, as_json: bool) -> None:
    left = hv().cluster_leave(force=force)
    print_json(left) if as_json else say(f"host {left['host']} left the cluster")
