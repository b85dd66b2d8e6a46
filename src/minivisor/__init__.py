"""minivisor: a single-node hosted hypervisor for VMware-style specfiles."""
