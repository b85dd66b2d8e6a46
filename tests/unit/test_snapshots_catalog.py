"""Catalog schema 2: the clone links table, added to an existing schema-1 catalog in one transaction."""

from __future__ import annotations

import sqlite3

from minivisor.datastore.catalog import SCHEMA_VERSION, Catalog

SCHEMA_1 = """
CREATE TABLE vms (name TEXT PRIMARY KEY COLLATE NOCASE, uuid TEXT NOT NULL UNIQUE, vmx TEXT NOT NULL UNIQUE,
                  created REAL NOT NULL, autostart INTEGER NOT NULL DEFAULT 0);
CREATE TABLE allowed_paths (path TEXT PRIMARY KEY);
INSERT INTO vms VALUES ('src', 'u-src', 'src/src.vmx', 1.0, 0), ('kid', 'u-kid', 'kid/kid.vmx', 2.0, 1);
PRAGMA user_version = 1;
"""


def test_a_schema_1_catalog_is_migrated_and_keeps_its_vms(tmp_path):
    path = tmp_path / "catalog.sqlite"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.close()
    catalog = Catalog(path)
    assert SCHEMA_VERSION >= 2
    assert catalog._db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert [(e.name, e.autostart) for e in catalog.list()] == [("kid", True), ("src", False)]
    with catalog.transaction() as db:
        catalog.add_clone_link(db, "u-kid", "u-src", 3)
    assert catalog.clones_of("u-src") == [("kid", 3)] and catalog.clones_of("u-src", 4) == []
    with catalog.transaction() as db:
        catalog.remove(db, "kid")
    assert catalog.clones_of("u-src") == []  # a clone no longer in the catalog protects nothing


def test_a_new_catalog_has_every_table(tmp_path):
    catalog = Catalog(tmp_path / "new.sqlite")
    tables = {row[0] for row in catalog._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"vms", "allowed_paths", "clone_links"} <= tables
    Catalog(tmp_path / "new.sqlite")  # opening again is a no-op
