"""Catalog migrations: a schema-1 catalog is brought to today's schema in one transaction, keeping its VMs.

Schemas are read back through a separate SQLite connection, as another process would see the file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from minivisor.datastore.catalog import Catalog
from minivisor.errors import HostError

SCHEMA_1 = """
CREATE TABLE vms (name TEXT PRIMARY KEY COLLATE NOCASE, uuid TEXT NOT NULL UNIQUE, vmx TEXT NOT NULL UNIQUE,
                  created REAL NOT NULL, autostart INTEGER NOT NULL DEFAULT 0);
CREATE TABLE allowed_paths (path TEXT PRIMARY KEY);
INSERT INTO vms VALUES ('src', 'u-src', 'src/src.vmx', 1.0, 0), ('kid', 'u-kid', 'kid/kid.vmx', 2.0, 1);
PRAGMA user_version = 1;
"""


def schema(path: Path) -> tuple[int, list[tuple[str, str]]]:
    """The file's schema version and its tables and indexes, as another connection reads them."""
    db = sqlite3.connect(path)
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        objects = db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                             "ORDER BY type, name").fetchall()
    finally:
        db.close()
    return version, objects


def test_a_schema_1_catalog_is_migrated_to_what_a_new_catalog_has_and_keeps_its_vms(tmp_path):
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.executescript(SCHEMA_1)
    db.close()
    catalog = Catalog(old)
    Catalog(tmp_path / "new.sqlite").close()
    assert schema(old) == schema(tmp_path / "new.sqlite")
    assert [(e.name, e.autostart) for e in catalog.list()] == [("kid", True), ("src", False)]
    with catalog.transaction() as db:  # the clone links table came with the migration
        catalog.add_clone_link(db, "u-kid", "u-src", 3)
    assert catalog.clones_of("u-src") == [("kid", 3)] and catalog.clones_of("u-src", 4) == []
    with catalog.transaction() as db:
        catalog.remove(db, "kid")
    assert catalog.clones_of("u-src") == []  # a clone no longer in the catalog protects nothing


def test_reopening_a_catalog_keeps_its_rows_and_its_schema(tmp_path):
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    with catalog.transaction() as db:
        catalog.add(db, "web", "u-web", "web/web.vmx")
        catalog.add_clone_link(db, "u-kid", "u-web", 1)
    catalog.allow_path(str(tmp_path))
    catalog.close()
    before = schema(path)
    again = Catalog(path)
    assert schema(path) == before
    assert [e.name for e in again.list()] == ["web"] and again.allowed_paths() == [str(tmp_path)]
    assert again.clones_of("u-web") == []  # u-kid is no VM of this catalog
    with again.transaction() as db:
        again.add(db, "kid", "u-kid", "kid/kid.vmx")
    assert again.clones_of("u-web") == [("kid", 1)]  # the link survived the reopening


def test_a_catalog_from_a_newer_minivisor_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    version, _ = schema(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(HostError) as refused:
        Catalog(path)
    assert "newer minivisor" in refused.value.message and refused.value.hint == "upgrade minivisor"
    assert path.read_bytes() == before
