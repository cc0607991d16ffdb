"""Packages split into modules keep one face: callers import from the package alone, so each
public name of its modules is exported there (``__all__``), and each exported name resolves."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest


def _public(module: ModuleType) -> set[str]:
    """Classes and functions defined in ``module``, and the constants it assigns."""
    source = inspect.getsource(module)
    names = {name for name, value in vars(module).items()
             if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
             and value.__module__ == module.__name__}
    return names | {name for name in vars(module)
                    if name.isupper() and not name.startswith("_") and f"\n{name}" in source
                    and (f"\n{name} = " in source or f"\n{name}: " in source)}


@pytest.mark.parametrize(("package", "modules"), [
    ("edgeproxy.config", ("units", "sections", "loading")),
    ("edgeproxy.crypto", ("layout", "stream", "ranges")),
])
def test_a_package_exports_every_public_name_of_its_modules(package: str,
                                                             modules: tuple[str, ...]) -> None:
    face = importlib.import_module(package)
    exported = set(face.__all__)
    for name in modules:
        module = importlib.import_module(f"{package}.{name}")
        missing = _public(module) - exported
        assert not missing, f"{module.__name__} defines {sorted(missing)}, not exported"
    for name in exported:
        assert getattr(face, name) is not None
