"""The catalog: which VMs a datastore holds, in SQLite inside the datastore.

The catalog owns identity (name, UUID, where the specfile is, autostart) and the
virtual networks: each network's definition, the DHCP reservations on it, and the
port forwards of each VM's NICs. The hardware lives in each VM's specfile; power
state lives with the VMM, and what a network is on the host (bridges, taps,
dnsmasq, nftables) is built from these rows by :mod:`minivisor.net`.
Every write is one transaction (``BEGIN IMMEDIATE``), so a crash leaves either
the old catalog or the new one.

The catalog keeps a rollback journal, not a write-ahead log: a WAL reader must
create and grow the ``-shm`` index file, so on a full datastore even
``vm list`` and ``vm stop`` failed ("disk I/O error"). With a rollback journal
reading writes nothing; only writes need space, and they fail as NoSpaceError.
"""

from __future__ import annotations

# The C module under the sqlite3 package: the package adds the DB-API's date and time constructors and
# registers datetime's adapters (importing datetime: ~1.5 ms of every direct command), which the catalog,
# storing only text and numbers, never uses.
import _sqlite3 as sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConflictError, HostError, NoSpaceError, NotFoundError, host_refused
from ..records import Record
from ..text import excerpt

__all__ = ["Catalog", "VmEntry", "NetworkEntry", "Reservation", "ForwardEntry"]

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    name      TEXT PRIMARY KEY COLLATE NOCASE,
    uuid      TEXT NOT NULL UNIQUE,
    vmx       TEXT NOT NULL UNIQUE,   -- path of the specfile, relative to the datastore
    created   REAL NOT NULL,
    autostart INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS allowed_paths (
    path TEXT PRIMARY KEY               -- host folders specfiles may name outside it
);
"""
# Schema changes after version 1, applied in order by _migrate (each in the same transaction).
MIGRATIONS = {
    2: """
CREATE TABLE IF NOT EXISTS clone_links (
    clone_uuid   TEXT PRIMARY KEY,      -- a linked clone ...
    source_uuid  TEXT NOT NULL,         -- ... whose disks are overlays on this VM's ...
    snapshot_uid INTEGER NOT NULL       -- ... snapshot (uid in its .vmsd): read-only while linked
);
CREATE INDEX IF NOT EXISTS clone_links_source ON clone_links (source_uuid, snapshot_uid);
""",
    3: """
CREATE TABLE IF NOT EXISTS spec_cache ( -- a cache only: the specfile stays the truth
    vmx      TEXT PRIMARY KEY,
    uuid     TEXT NOT NULL,
    stamp    TEXT NOT NULL,             -- the specfile's mtime_ns, size and inode when summarised
    summary  TEXT NOT NULL              -- JSON: what `vm list` shows about the hardware
);
""",
    4: """
CREATE TABLE IF NOT EXISTS networks (
    name    TEXT PRIMARY KEY COLLATE NOCASE,
    mode    TEXT NOT NULL,              -- nat, isolated, bridged
    subnet  TEXT,                       -- the host's address on it, CIDR (nat, isolated), NULL when bridged
    dhcp    INTEGER NOT NULL,
    bridge  TEXT NOT NULL UNIQUE,       -- the Linux bridge that is the switch
    uplink  TEXT,                       -- bridged: the host interface on the switch
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reservations (
    network TEXT NOT NULL COLLATE NOCASE,
    mac     TEXT NOT NULL,
    address TEXT NOT NULL,
    vm_uuid TEXT NOT NULL,              -- the VM whose NIC it is (removed with it)
    PRIMARY KEY (network, mac),
    UNIQUE (network, address)
);
CREATE TABLE IF NOT EXISTS port_forwards (
    vm_uuid    TEXT NOT NULL,
    nic        INTEGER NOT NULL,        -- ethernetN
    protocol   TEXT NOT NULL,           -- tcp, udp
    host_addr  TEXT NOT NULL,           -- IPv4 (0.0.0.0: every address of the host)
    host_port  INTEGER NOT NULL,
    guest_port INTEGER NOT NULL,
    PRIMARY KEY (protocol, host_addr, host_port)
);
""",
}


class VmEntry(Record, frozen=True):
    """One VM as the catalog knows it."""

    name: str
    uuid: str
    vmx: str
    created: float
    autostart: bool = False


class NetworkEntry(Record, frozen=True):
    """A virtual network (a switch) as the catalog keeps it."""

    name: str
    mode: str  # nat, isolated, bridged
    subnet: str | None  # "192.168.100.1/24": the host's address and the prefix; None when bridged
    dhcp: bool
    bridge: str
    uplink: str | None = None
    created: float = 0.0


class Reservation(Record, frozen=True):
    """A fixed DHCP address for one MAC on one network."""

    network: str
    mac: str
    address: str
    vm_uuid: str


class ForwardEntry(Record, frozen=True):
    """A port of the host forwarded to a port of one NIC of a VM."""

    vm_uuid: str
    nic: int
    protocol: str
    host_addr: str
    host_port: int
    guest_port: int


class Catalog:
    """A SQLite catalog file; one connection per instance."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # check_same_thread off: the service hands each instance to one thread at a time.
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
            self._leave_wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.Error as exc:
            raise HostError(f"cannot open the catalog {path}: {exc}",
                            hint="check that the datastore folder is writable and not corrupt") from exc

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise HostError(f"the catalog {self.path} was written by a newer minivisor (schema {version})",
                            hint="upgrade minivisor")
        if version < SCHEMA_VERSION:
            with self.transaction() as db:
                scripts = ([SCHEMA] if version == 0 else []) + [MIGRATIONS[v] for v in sorted(MIGRATIONS) if v > version]
                for script in scripts:
                    for statement in filter(str.strip, script.split(";")):
                        db.execute(statement)  # executescript() would commit behind our back
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _leave_wal(self) -> None:
        """Switch a catalog that earlier versions kept in WAL mode to a rollback journal, when nobody else has it open.

        Changing the mode needs the catalog to itself: while another process holds it (a service), this
        does not wait and the catalog stays in WAL mode until a later open.
        """
        (mode,) = self._db.execute("PRAGMA journal_mode").fetchone()
        if mode.lower() != "wal":
            return
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            self._db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass  # busy: another connection is open
        finally:
            self._db.execute("PRAGMA busy_timeout=10000")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: commits on success, rolls back on any exception.

        A write that finds the datastore full raises NoSpaceError (SQLite has rolled it back).
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite ends a transaction itself when the disk is full
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
                # the catalog or .minivisor is immutable, or the datastore on a read-only mount: nothing was written
                raise host_refused(f"write the catalog {self.path}", exc) from exc
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise NoSpaceError(f"the catalog {self.path} cannot grow: its file system is full",
                               hint="free space in the datastore, then retry") from exc

    # -- VMs -------------------------------------------------------------
    def add(self, db: sqlite3.Connection, name: str, uuid: str, vmx: str) -> VmEntry:
        """Insert a VM inside an open transaction; a clash raises ConflictError."""
        entry = VmEntry(name, uuid, vmx, time.time())
        try:
            db.execute("INSERT INTO vms (name, uuid, vmx, created) VALUES (?, ?, ?, ?)",
                       (entry.name, entry.uuid, entry.vmx, entry.created))
        except sqlite3.IntegrityError as exc:
            raise self._clash(name, uuid, vmx) from exc
        return entry

    def _clash(self, name: str, uuid: str, vmx: str) -> ConflictError:
        if self.find(name):
            return ConflictError(f"a VM named {excerpt(name)} already exists", hint="choose another name")
        row = self._db.execute("SELECT name FROM vms WHERE vmx = ?", (vmx,)).fetchone()
        if row:
            return ConflictError(f"{vmx} is already registered as {row[0]!r}",
                                 hint=f"use that VM, or unregister it first: minivisor vm unregister {row[0]}")
        return ConflictError(f"a VM with UUID {uuid} already exists", hint="give the copy a new uuid.bios")

    def remove(self, db: sqlite3.Connection, name: str) -> None:
        db.execute("DELETE FROM spec_cache WHERE vmx = (SELECT vmx FROM vms WHERE name = ?)", (name,))
        for table in ("reservations", "port_forwards"):  # the VM's addresses and ports are free again
            db.execute(f"DELETE FROM {table} WHERE vm_uuid = (SELECT uuid FROM vms WHERE name = ?)", (name,))
        db.execute("DELETE FROM vms WHERE name = ?", (name,))

    def set_autostart(self, name: str, enabled: bool) -> None:
        with self.transaction() as db:
            db.execute("UPDATE vms SET autostart = ? WHERE name = ?", (int(enabled), name))

    def find(self, name: str) -> VmEntry | None:
        row = self._db.execute("SELECT name, uuid, vmx, created, autostart FROM vms WHERE name = ?",
                               (name,)).fetchone()
        return _entry(row) if row else None

    def get(self, name: str) -> VmEntry:
        entry = self.find(name)
        if entry is None:
            raise NotFoundError(f"no VM named {excerpt(name)} in this datastore",
                                hint="see the VMs with: minivisor vm list")
        return entry

    def list(self) -> list[VmEntry]:
        rows = self._db.execute("SELECT name, uuid, vmx, created, autostart FROM vms ORDER BY name")
        return [_entry(row) for row in rows]

    def in_folder(self, folder: str) -> list[VmEntry]:
        """The VMs whose specfile is anywhere under ``folder`` (a path relative to the datastore)."""
        rows = self._db.execute("SELECT name, uuid, vmx, created, autostart FROM vms "
                                "WHERE substr(vmx, 1, length(?) + 1) = ? || '/' ORDER BY name", (folder, folder))
        return [_entry(row) for row in rows]

    # -- linked clones (schema 2) ----------------------------------------
    def add_clone_link(self, db: sqlite3.Connection, clone_uuid: str, source_uuid: str, snapshot_uid: int) -> None:
        db.execute("INSERT OR REPLACE INTO clone_links (clone_uuid, source_uuid, snapshot_uid) VALUES (?, ?, ?)",
                   (clone_uuid, source_uuid, snapshot_uid))

    def clones_of(self, source_uuid: str, snapshot_uid: int | None = None) -> list[tuple[str, int]]:
        """(clone name, snapshot uid) of the registered linked clones of a VM (or one snapshot)."""
        query = ("SELECT vms.name, l.snapshot_uid FROM clone_links l JOIN vms ON vms.uuid = l.clone_uuid "
                 "WHERE l.source_uuid = ?")
        args: tuple = (source_uuid,)
        if snapshot_uid is not None:
            query, args = query + " AND l.snapshot_uid = ?", (source_uuid, snapshot_uid)
        return [(row[0], row[1]) for row in self._db.execute(query + " ORDER BY vms.name", args)]

    def clone_source(self, clone_uuid: str) -> tuple[VmEntry, int] | None:
        """(source VM, snapshot uid) a linked clone's disks are overlays on, or None."""
        row = self._db.execute("SELECT vms.name, vms.uuid, vms.vmx, vms.created, vms.autostart, l.snapshot_uid "
                               "FROM clone_links l JOIN vms ON vms.uuid = l.source_uuid WHERE l.clone_uuid = ?",
                               (clone_uuid,)).fetchone()
        return (_entry(row[:5]), row[5]) if row else None

    def remove_clone_link(self, db: sqlite3.Connection, clone_uuid: str) -> None:
        db.execute("DELETE FROM clone_links WHERE clone_uuid = ?", (clone_uuid,))

    # -- specfile summaries (a cache keyed by the file's stamp) ----------
    def summaries(self, vmxs: list[str]) -> dict[str, tuple[str, str, str]]:
        """vmx -> (uuid, stamp, summary JSON) of the cached specfile summaries of these specfiles."""
        found = {}
        for start in range(0, len(vmxs), 500):
            chunk = vmxs[start:start + 500]
            rows = self._db.execute(f"SELECT vmx, uuid, stamp, summary FROM spec_cache WHERE vmx IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
            found.update({vmx: (uuid, stamp, summary) for vmx, uuid, stamp, summary in rows})
        return found

    def store_summaries(self, rows: list[tuple[str, str, str, str]]) -> None:
        """Cache (vmx, uuid, stamp, summary JSON) rows; skipped if the catalog is busy."""
        try:
            with self.transaction() as db:
                self.put_summaries(db, rows)
        except (sqlite3.OperationalError, HostError):
            pass  # a cache (busy, or a full or read-only datastore): the next reader stores it

    def put_summaries(self, db: sqlite3.Connection, rows: list[tuple[str, str, str, str]]) -> None:
        """Cache summary rows inside an open transaction (a VM being added: one commit, one set of fsyncs)."""
        db.executemany("INSERT OR REPLACE INTO spec_cache (vmx, uuid, stamp, summary) VALUES (?, ?, ?, ?)", rows)

    # -- allowed host paths ----------------------------------------------
    def allowed_paths(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT path FROM allowed_paths ORDER BY path")]

    def allow_path(self, path: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO allowed_paths (path) VALUES (?)", (path,))


    # -- networks (schema 4) ---------------------------------------------
    def add_network(self, network: NetworkEntry) -> None:
        """A new network; a name or bridge already taken raises ConflictError."""
        try:
            with self.transaction() as db:
                db.execute("INSERT INTO networks (name, mode, subnet, dhcp, bridge, uplink, created) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (network.name, network.mode, network.subnet,
                                                            int(network.dhcp), network.bridge, network.uplink,
                                                            network.created or time.time()))
        except sqlite3.IntegrityError as exc:
            if "networks.bridge" in str(exc):
                raise ConflictError(f"the bridge {excerpt(network.bridge)} is already another network's switch",
                                    hint="choose another bridge, or see the networks: minivisor net list") from exc
            raise ConflictError(f"a network named {excerpt(network.name)} already exists",
                                hint="choose another name, or see the networks: minivisor net list") from exc

    def remove_network(self, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM reservations WHERE network = ?", (name,))
            db.execute("DELETE FROM networks WHERE name = ?", (name,))

    def find_network(self, name: str) -> NetworkEntry | None:
        row = self._db.execute(f"SELECT {_NETWORK_COLUMNS} FROM networks WHERE name = ?", (name,)).fetchone()
        return _network(row) if row else None

    def networks(self) -> list[NetworkEntry]:
        return [_network(row) for row in self._db.execute(f"SELECT {_NETWORK_COLUMNS} FROM networks ORDER BY name")]

    # -- DHCP reservations -------------------------------------------------
    def reservations(self, network: str) -> list[Reservation]:
        rows = self._db.execute("SELECT network, mac, address, vm_uuid FROM reservations WHERE network = ? "
                                "ORDER BY address", (network,))
        return [Reservation(*row) for row in rows]

    def reservations_of(self, vm_uuid: str) -> list[Reservation]:
        rows = self._db.execute("SELECT network, mac, address, vm_uuid FROM reservations WHERE vm_uuid = ?",
                                (vm_uuid,))
        return [Reservation(*row) for row in rows]

    def reserve(self, reservation: Reservation) -> None:
        """Give a MAC its address on a network (replacing its earlier one); an address taken raises ConflictError."""
        try:
            with self.transaction() as db:
                db.execute("DELETE FROM reservations WHERE network = ? AND mac = ?",
                           (reservation.network, reservation.mac))
                db.execute("INSERT INTO reservations (network, mac, address, vm_uuid) VALUES (?, ?, ?, ?)",
                           (reservation.network, reservation.mac, reservation.address, reservation.vm_uuid))
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"{reservation.address} is already reserved on network {reservation.network!r}",
                                hint="choose another address") from exc

    # -- port forwards -----------------------------------------------------
    def forwards(self, vm_uuid: str | None = None) -> list[ForwardEntry]:
        """The port forwards of one VM, or of every VM."""
        query = f"SELECT {_FORWARD_COLUMNS} FROM port_forwards"
        rows = (self._db.execute(query + " WHERE vm_uuid = ? ORDER BY host_port", (vm_uuid,)) if vm_uuid
                else self._db.execute(query + " ORDER BY host_port"))
        return [ForwardEntry(*row) for row in rows]

    def add_forward(self, forward: ForwardEntry) -> None:
        with self.transaction() as db:
            db.execute(f"INSERT INTO port_forwards ({_FORWARD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                       (forward.vm_uuid, forward.nic, forward.protocol, forward.host_addr, forward.host_port,
                        forward.guest_port))

    def remove_forward(self, forward: ForwardEntry) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM port_forwards WHERE protocol = ? AND host_addr = ? AND host_port = ?",
                       (forward.protocol, forward.host_addr, forward.host_port))

    def vm_by_uuid(self, uuid: str) -> VmEntry | None:
        row = self._db.execute("SELECT name, uuid, vmx, created, autostart FROM vms WHERE uuid = ?",
                               (uuid,)).fetchone()
        return _entry(row) if row else None


_NETWORK_COLUMNS = "name, mode, subnet, dhcp, bridge, uplink, created"
_FORWARD_COLUMNS = "vm_uuid, nic, protocol, host_addr, host_port, guest_port"


def _network(row: tuple) -> NetworkEntry:
    name, mode, subnet, dhcp, bridge, uplink, created = row
    return NetworkEntry(name, mode, subnet, bool(dhcp), bridge, uplink, created)


def _entry(row: tuple) -> VmEntry:
    name, uuid, vmx, created, autostart = row
    return VmEntry(name, uuid, vmx, created, bool(autostart))
