"""Plan-named plugins: importable modules registered into the xmm registry before a run.

Entry points are how installed plugins register; a plan's ``plugins: ["my_pkg.my_modality"]`` adds modules that are
merely importable (a project's own modality, or a test's), and it works in every process that ``torchrun`` starts,
which in-process registrations cannot reach.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from xmm.errors import ConfigError


def import_plugins(modules: Sequence[str], *, source: str | None = None) -> None:
    """Import each module and register it as a plugin (once per process registry)."""
    from xmm.registry import get_registry

    reg = get_registry()
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a plugin must be a module name, got {name!r}", field=f"plugins.{i}", source=source)
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import plugin module '{name}': {e}", field=f"plugins.{i}", source=source) from e
        if reg.pm.is_registered(module) or any(p.name == name and p.error is None for p in reg.plugins):
            continue
        info = reg.register(module, name=name, distribution=name, version=getattr(module, "__version__", "0"))
        if info.error:
            raise ConfigError(f"plugin '{name}' failed to register: {info.error}", field=f"plugins.{i}", source=source)
