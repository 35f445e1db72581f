"""kubernetes_asyncio without importing its 1,600 generated modules up front: about 35 MB less RSS.

The operator takes from the Kubernetes client only its kubeconfig and in-cluster loaders
(cluster/credentials.py), and kopf only checks that it is installed. Importing the package runs
`kubernetes_asyncio/__init__.py`, which imports every generated API and model class, for nothing the
operator calls. `install()` registers the package and its `client`, `client.api` and `client.models`
packages without running their `__init__` modules: every name they export is imported on first use
instead (a PEP 562 module `__getattr__`), from the module their own `__init__` names for it, so all
imports still resolve. The operator's entry point (cli.py) calls it before anything imports the client.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
import types
from pathlib import Path

PACKAGES = (
    "kubernetes_asyncio",
    "kubernetes_asyncio.client",
    "kubernetes_asyncio.client.api",
    "kubernetes_asyncio.client.models",
)
_FROM = re.compile(r"^from\s+([\w.]+)\s+import\s+(\w+)\s*$", re.MULTILINE)


def _exports(init: Path) -> dict[str, str]:
    """name -> module, from the package's own `from module import name` lines."""
    return {name: module for module, name in _FROM.findall(init.read_text()) if module != "__future__"}


def _lazy_package(name: str) -> types.ModuleType | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return None
    module = importlib.util.module_from_spec(spec)
    exports = _exports(Path(spec.origin))

    def __getattr__(attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        target = exports.get(attr)
        if target is not None:
            value: object = getattr(importlib.import_module(target), attr)
        else:
            try:
                value = importlib.import_module(f"{name}.{attr}")
            except ModuleNotFoundError as err:
                if err.name != f"{name}.{attr}":
                    raise
                raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None
        setattr(module, attr, value)
        return value

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def install() -> bool:
    """Register the lazy packages; False (and nothing changed) when the client is already imported or
    not installed."""
    if any(name in sys.modules for name in PACKAGES):
        return False
    for i, name in enumerate(PACKAGES):
        if _lazy_package(name) is None:
            for done in PACKAGES[:i]:
                sys.modules.pop(done, None)
            return False
    return True
