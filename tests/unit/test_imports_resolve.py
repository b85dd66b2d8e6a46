"""Every import inside minivisor names something that exists, wherever the import sits.

Many imports are made where they are used (so that `vm list` loads little), and a name that
moved away from such an import fails only when that code path runs. This reads every
``from ... import ...`` in the package (ast) and checks the module and the name are there.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import minivisor

PACKAGE = Path(minivisor.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of each ``from module import name`` that points into minivisor."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        if target.split(".")[0] in ("minivisor", "minivisor_appliance"):
            found += [(node.lineno, target, alias.name) for alias in node.names]
    return found


def test_every_imported_name_exists() -> None:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module, name in _imports(path):
            imported = importlib.import_module(module)
            if name != "*" and not hasattr(imported, name):
                try:  # a submodule: `from . import power`
                    importlib.import_module(f"{module}.{name}")
                except ModuleNotFoundError:
                    missing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
