"""`from montybase import *`, as the original Montybase README writes it: the Python client.

The distribution's one package: `montybase.server` (the folder `server/`) and `montybase.client`
(the folder `python_client/`) import each other relatively or as `montybase.…`, never by the bare
names, so a user's own `server.py` or `python_client.py` in the current folder cannot stand in
for them. `server` and `python_client` still import, as the same module objects (`old_name`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

OLD_NAMES = {"server": "montybase.server", "python_client": "montybase.client"}


def _load_checkout_folders() -> None:
    """In a checkout this folder sits beside `server/` and `python_client/` instead of holding
    them (pyproject.toml maps them into it when installed): load them under their names here."""
    here = Path(__file__).resolve().parent
    if (here / "server").is_dir():
        return
    for old, new in OLD_NAMES.items():
        if new in sys.modules:
            continue
        folder = here.parent / old
        spec = importlib.util.spec_from_file_location(new, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[new] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[new]
            raise
        globals()[new.rpartition(".")[2]] = module  # as the import system sets a subpackage


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`server.x` is `montybase.server.x` (and `python_client.x` is `montybase.client.x`): one
    module, so classes, caches and state are never twice in a process."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._specs: dict[str, importlib.machinery.ModuleSpec] = {}

    def find_spec(self, fullname, path=None, target=None):
        old, _, rest = fullname.partition(".")
        # `python -m server` runs server/__main__.py itself, found beside the aliased package.
        if old in self.names and rest and rest != "__main__":
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        old, _, rest = spec.name.partition(".")
        module = importlib.import_module(f"{OLD_NAMES[old]}.{rest}")
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # The import system stamped the old name's spec on the module: give it back its own.
        module.__spec__ = self._specs.pop(module.__spec__.name)


_finder = _OldNames()


def old_name(name: str) -> None:
    """Make the package being imported as `name` (`server` or `python_client`) the new one."""
    sys.modules[name] = importlib.import_module(OLD_NAMES[name])
    if not _finder.names:
        sys.meta_path.insert(0, _finder)
    _finder.names.add(name)


_load_checkout_folders()

from .client import *  # noqa: E402, F403
from .client import __all__  # noqa: E402, F401
