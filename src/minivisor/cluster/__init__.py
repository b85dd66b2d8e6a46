"""A **cluster** of minivisor hosts on etcd (issue 14): what the hosts must agree on, nothing else.

Each host keeps its own datastore and catalog (SQLite); etcd holds the cluster's members, their
liveness (a lease each member's service keeps alive) and which host owns each running VM. Nothing
here is loaded in single-host mode: a datastore joins a cluster with ``cluster init``/``join``.

- :mod:`.config`: the datastore's cluster configuration, the lease's timings (stdlib only);
- :mod:`.store`: etcd through its JSON gateway (``etcd3gw``), one error when it is unreachable;
- :mod:`.records`: the keys and records in etcd, checked when read;
- :mod:`.membership`: init, join, leave, status;
- :mod:`.ownership`: one owner per VM, claimed with a transaction before power-on;
- :mod:`.liveness`: the member a service runs: the lease renewed, ownership reconciled, self-fencing;
- :mod:`.heartbeat`: what the service tells the host's watchdog process after each renewal;
- :mod:`.ha`: HA restart: VMs marked HA are powered on by another member when their host dies.
"""
