"""The architecture you can see: which module may import which, read from the source (ast, nothing imported).

The layers of ``src/minivisor``, bottom to top. A module may import its own layer and the layers
below it, never one above; siblings share a rank.

    rank  layer        modules (under src/minivisor/)
    0     foundation   errors.py text.py units.py locks.py files.py procfs.py dirs.py, and any other
                       top-level module except client.py
    1     spec         spec/
    2     images       images/
    3     datastore    datastore/
    4     storage      storage/      } siblings: neither may import the other
    4     host         host/         }
    4     net          net/          } (net may import neither, nor they it)
    5     vmm          vmm/
    5     cluster      cluster/      (etcd: members, leases, VM ownership; core claims ownership through it)
    6     core         core/, and the package itself (``minivisor/__init__.py`` re-exports the core API)
    7     interfaces   service/, client.py, cli/   (they may use each other: `serve`, the client's routes)

    minivisor/__init__.py and __main__.py import whatever they like (they are the package's front door).
    src/minivisor_appliance (the test-guest builder) may import only the foundation; of minivisor's
    layers only the interfaces may import it (the CLI's `demo` and `appliance` commands run it).

Besides the direction, privacy: a name with one leading underscore belongs to the module that defines it.

- ``from x import _y`` is a violation (any x: another module's private name).
- ``expr._name`` is a violation unless ``expr`` is ``self`` or ``cls``, or ``_name`` is defined in this
  same module (a def, class, assignment or attribute assignment: a class may use the privates of
  other instances of itself), or ``expr`` is a module or name imported from outside minivisor
  (``os._exit``), or ``_name`` is part of namedtuple's public API (``_replace``, ``_asdict``...).
  The rule looks at names, not types: a private of another module with the same name as one of this
  module's is missed, which keeps it free of false alarms.

Every import counts, wherever it is (inside a function, under ``if TYPE_CHECKING:``): a type-only
import is still a dependency.

A violation fails the test with one line each: file:line, what imports what, and why it may not.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

RANKS = {"foundation": 0, "spec": 1, "images": 2, "datastore": 3, "storage": 4, "host": 4, "net": 4, "vmm": 5,
         "cluster": 5, "core": 6, "interfaces": 7}
PACKAGES = {"spec": "spec", "images": "images", "datastore": "datastore", "storage": "storage", "host": "host",
            "net": "net", "vmm": "vmm", "cluster": "cluster", "core": "core", "service": "interfaces",
            "cli": "interfaces"}  # minivisor.<package> -> layer
TOP_LEVEL = {"client": "interfaces"}  # minivisor.<module> -> layer; other top-level modules: foundation
FRONT_DOOR = {"minivisor", "minivisor.__main__"}  # __init__.py and __main__.py: may import anything
APART = {frozenset({"storage", "host"}), frozenset({"storage", "net"}), frozenset({"vmm", "cluster"}),
         frozenset({"host", "net"})}  # same rank, may not import each other
APPLIANCE = "minivisor_appliance"  # imports the foundation only; imported by the interfaces only
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


@dataclass(frozen=True)
class Module:
    name: str  # dotted: minivisor.storage.images
    path: Path
    is_package: bool  # an __init__.py: its relative imports start from itself

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]

    def tree(self) -> ast.Module:
        return ast.parse(self.path.read_bytes(), str(self.path))


class Source:
    """The modules of minivisor and minivisor_appliance under a ``src`` folder."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self.modules: dict[str, Module] = {}
        for top in ("minivisor", APPLIANCE):
            for path in sorted((src / top).rglob("*.py")):
                parts = path.relative_to(src).with_suffix("").parts
                is_package = parts[-1] == "__init__"
                name = ".".join(parts[:-1] if is_package else parts)
                self.modules[name] = Module(name, path, is_package)

    def where(self, module: Module, line: int) -> str:
        return f"{module.path.relative_to(self.src.parent)}:{line}"

    def layer_of(self, name: str) -> str:
        """The layer of a module of ours (``minivisor`` itself re-exports the core API)."""
        parts = name.split(".")
        if parts[0] == APPLIANCE:
            return "appliance"
        if len(parts) == 1:
            return "core"
        if parts[1] in PACKAGES:
            return PACKAGES[parts[1]]
        if self.modules.get(".".join(parts[:2]), Module("", Path(), False)).is_package:
            raise AssertionError(f"the package minivisor.{parts[1]} is in no layer: add it to PACKAGES in "
                                 f"{Path(__file__).name}")
        return TOP_LEVEL.get(parts[1], "foundation")

    def imports(self, module: Module) -> list[tuple[int, str, list[str]]]:
        """(line, imported module, names taken from it) for every import in ``module``, in line order."""
        found = []
        for node in ast.walk(module.tree()):
            if isinstance(node, ast.Import):
                found += [(node.lineno, alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = node.module or ""
                if node.level:
                    anchor = module.package.split(".")
                    base = ".".join(anchor[:len(anchor) - node.level + 1] + ([node.module] if node.module else []))
                plain = []
                for alias in node.names:  # `from package import submodule` imports the submodule
                    if f"{base}.{alias.name}" in self.modules:
                        found.append((node.lineno, f"{base}.{alias.name}", []))
                    else:
                        plain.append(alias.name)
                if plain:
                    found.append((node.lineno, base, plain))
        return sorted(found, key=lambda item: item[0])

    def direction_problem(self, importer: str, imported: str) -> str | None:
        """Why ``importer`` may not import ``imported`` (both ours), or None if it may."""
        if importer in FRONT_DOOR:
            return None
        low, high = self.layer_of(imported), self.layer_of(importer)
        if high == "appliance":
            return None if low in ("foundation", "appliance") else f"{APPLIANCE} may import only the foundation"
        if low == "appliance":
            return None if high == "interfaces" else f"only the interfaces may import {APPLIANCE}"
        if RANKS[low] > RANKS[high]:
            return "which is above it"
        if frozenset({low, high}) in APART:
            return f"its sibling ({' and '.join(sorted({low, high}))} may not import each other)"
        return None


def ours(name: str) -> bool:
    return name.split(".")[0] in ("minivisor", APPLIANCE)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def layer_violations(src: Path) -> list[str]:
    source = Source(src)
    return [f"{source.where(module, line)}: {module.name} ({source.layer_of(module.name)}) imports {imported} "
            f"({source.layer_of(imported)}), {why}"
            for module in source.modules.values() for line, imported, _ in source.imports(module)
            if ours(imported) and (why := source.direction_problem(module.name, imported))]


def private_import_violations(src: Path) -> list[str]:
    source = Source(src)
    return [f"{source.where(module, line)}: {module.name} imports {name}, a private name of {imported}"
            for module in source.modules.values() for line, imported, names in source.imports(module)
            for name in names if private(name)]


def defined_names(tree: ast.AST) -> set[str]:
    """Every name a module defines or assigns, attributes included (``self._cache = ...``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def foreign_names(tree: ast.AST) -> set[str]:
    """Names bound by importing from outside minivisor (``os``, ``from sys import flags``...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if not ours(a.name)}
        elif isinstance(node, ast.ImportFrom) and not node.level and not ours(node.module or ""):
            names |= {a.asname or a.name for a in node.names}
    return names


def private_attribute_violations(src: Path) -> list[str]:
    source = Source(src)
    found = []
    for module in source.modules.values():
        tree = module.tree()
        allowed, receivers = defined_names(tree) | NAMEDTUPLE_API, {"self", "cls"} | foreign_names(tree)
        reaches = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and private(node.attr)
                   and node.attr not in allowed
                   and not (isinstance(node.value, ast.Name) and node.value.id in receivers)]
        for node in sorted(reaches, key=lambda node: (node.lineno, node.col_offset)):
            found.append(f"{source.where(module, node.lineno)}: {module.name} uses {ast.unparse(node)}, "
                         "a private attribute it does not define")
    return found


RULES = {"layers": layer_violations, "private-imports": private_import_violations,
         "private-attributes": private_attribute_violations}
@pytest.mark.parametrize("rule", list(RULES))
def test_the_source_keeps_the_rule(rule):
    found = RULES[rule](SRC)
    assert not found, f"{len(found)} violation(s) of the {rule} rule:\n" + "\n".join(found)


# -- the checker itself, on a small tree made to break each rule once ------------------------------------

FIXTURE = {
    "minivisor/__init__.py": "from .cli import vm\n",  # the front door: anything
    "minivisor/__main__.py": "from minivisor.cli import main\n",
    "minivisor/errors.py": "",
    "minivisor/procfs.py": "from .errors import HvError\n",  # a new top-level helper: foundation
    "minivisor/spec/__init__.py": "",
    "minivisor/spec/vmx.py": "from .. import errors\nfrom ..datastore import store\n",  # line 2: up
    "minivisor/datastore/__init__.py": "",
    "minivisor/datastore/store.py": "import minivisor.spec.vmx\n",
    "minivisor/storage/__init__.py": "",
    "minivisor/storage/images.py": ("from ..host.facts import find_qemu_img\n"  # a sibling
                                    "from minivisor.vmm.process import _is_ours\n"  # up, and private
                                    "def f():\n"
                                    "    from minivisor import Hypervisor\n"),  # up: the package is core
    "minivisor/host/__init__.py": "",
    "minivisor/host/facts.py": "import os\n_BOOT_ID = 1\ndef g():\n    os._exit(_BOOT_ID)\n",
    "minivisor/vmm/__init__.py": "",
    "minivisor/vmm/process.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                 "    from ..core.hypervisor import Hypervisor\n"  # line 3: up, type only
                                 "class Vmm:\n    _children = {}\n"
                                 "    def same(self, other):\n        return other._children is Vmm._children\n"
                                 "def _is_ours():\n    return Vmm._children\n"),
    "minivisor/core/__init__.py": "",
    "minivisor/core/hypervisor.py": ("from ..vmm.process import Vmm\nfrom minivisor_appliance import build\n"
                                     "class Hypervisor:\n    def _emit(self):\n        return self._emit\n"),
    "minivisor/core/diskops.py": ("from collections import namedtuple\n"
                                  "def op(hv, pair):\n    pair._replace(a=1)\n    return hv._emit(), hv.vmm._pid\n"),
    "minivisor/cli/__init__.py": "from . import vm\nfrom ..service import app\nimport minivisor_appliance.build\n",
    "minivisor/cli/vm.py": "from ..client import Client\n",
    "minivisor/client.py": "from .service import app\n",
    "minivisor/service/__init__.py": "",
    "minivisor/service/app.py": "from ..core.hypervisor import Hypervisor\n",
    "minivisor_appliance/__init__.py": "",
    "minivisor_appliance/build.py": "from minivisor import dirs\nfrom minivisor.errors import HvError\n"
                                    "from minivisor.spec import vmx\n",
}


@pytest.fixture
def tree(tmp_path) -> Path:
    for name, text in FIXTURE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "minivisor/dirs.py").write_text("")
    return tmp_path


def test_the_checker_reports_each_upward_sibling_and_appliance_import_once(tree):
    where = tree.name
    assert layer_violations(tree) == [
        f"{where}/minivisor/core/hypervisor.py:2: minivisor.core.hypervisor (core) imports minivisor_appliance.build "
        "(appliance), only the interfaces may import minivisor_appliance",
        f"{where}/minivisor/spec/vmx.py:2: minivisor.spec.vmx (spec) imports minivisor.datastore.store (datastore), "
        "which is above it",
        f"{where}/minivisor/storage/images.py:1: minivisor.storage.images (storage) imports minivisor.host.facts "
        "(host), its sibling (host and storage may not import each other)",
        f"{where}/minivisor/storage/images.py:2: minivisor.storage.images (storage) imports minivisor.vmm.process "
        "(vmm), which is above it",
        f"{where}/minivisor/storage/images.py:4: minivisor.storage.images (storage) imports minivisor (core), "
        "which is above it",
        f"{where}/minivisor/vmm/process.py:3: minivisor.vmm.process (vmm) imports minivisor.core.hypervisor (core), "
        "which is above it",
        f"{where}/minivisor_appliance/build.py:3: minivisor_appliance.build (appliance) imports minivisor.spec.vmx "
        "(spec), minivisor_appliance may import only the foundation",
    ]


def test_the_checker_reports_private_imports_and_reaching_into_other_modules(tree):
    where = tree.name
    assert private_import_violations(tree) == [
        f"{where}/minivisor/storage/images.py:2: minivisor.storage.images imports _is_ours, "
        "a private name of minivisor.vmm.process"]
    assert private_attribute_violations(tree) == [
        f"{where}/minivisor/core/diskops.py:4: minivisor.core.diskops uses hv._emit, a private attribute it does "
        "not define",
        f"{where}/minivisor/core/diskops.py:4: minivisor.core.diskops uses hv.vmm._pid, a private attribute it "
        "does not define",
    ]


def test_a_package_in_no_layer_is_named_not_skipped(tree):
    (tree / "minivisor/plugins").mkdir()
    (tree / "minivisor/plugins/__init__.py").write_text("from ..core import hypervisor\n")
    with pytest.raises(AssertionError, match="minivisor.plugins is in no layer"):
        layer_violations(tree)
