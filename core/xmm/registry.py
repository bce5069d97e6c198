"""Plugin discovery and the registry of modalities, encoders, bridges, projectors and decoders.

Plugins come from setuptools entry points in group ``xmm`` (and from objects registered in-process, as tests do).
Core registers its own parts through the same hooks. A plugin that fails to import or that registers a name already
taken is recorded (distribution, version, error) and skipped; with ``XMM_STRICT_PLUGINS=1`` it raises
:class:`~xmm.errors.PluginError`. ``XMM_BLOCK_PLUGINS=a,b`` skips the named entry points or distributions.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from xmm import hookspecs, pretrained
from xmm.errors import CheckpointError, IncompatibleCheckpointError, PluginError, RegistryError
from xmm.persist import CONFIG_NAME, read_config_json, validate_config

if TYPE_CHECKING:
    from xmm.bridges.base import Bridge
    from xmm.projectors.base import Projector

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "xmm"
KINDS = ("modalities", "encoders", "bridges", "projectors", "decoders", "objectives", "recipes", "demo_tasks")
_SINGULAR = {"modalities": "modality", "encoders": "encoder", "bridges": "bridge", "projectors": "projector",
             "decoders": "decoder", "objectives": "objective", "recipes": "recipe", "demo_tasks": "demo task"}
# core's own plugin modules, registered like any plugin; named by module path (as entry points are), so the
# registry does not import the layers above it
CORE_PLUGINS = ("xmm._core_plugin", "xmm.training.core_plugin")


@dataclass
class PluginInfo:
    """One plugin as the registry saw it. ``error`` is set when it was skipped."""

    name: str
    distribution: str
    version: str
    modalities: list[str] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    projectors: list[str] = field(default_factory=list)
    decoders: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    recipes: list[str] = field(default_factory=list)
    demo_tasks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "modalities": self.modalities,
            "bridges": self.bridges,
            "encoders": self.encoders,
            "decoders": self.decoders,
            "projectors": self.projectors,
            "objectives": self.objectives,
            "recipes": self.recipes,
            "demo_tasks": self.demo_tasks,
        }
        if self.error:
            d["error"] = self.error
        return d


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _blocked() -> set[str]:
    return {x.strip() for x in os.environ.get("XMM_BLOCK_PLUGINS", "").split(",") if x.strip()}


class Registry:
    """Everything the installed plugins register, by kind and name."""

    def __init__(self, *, strict: bool | None = None, entry_points: bool = True) -> None:
        self.strict = _env_flag("XMM_STRICT_PLUGINS") if strict is None else strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.modalities: dict[str, Any] = {}
        self.encoders: dict[str, Callable[..., Any]] = {}
        self.bridges: dict[str, type] = {}
        self.projectors: dict[str, type] = {}
        self.decoders: dict[str, Callable[..., Any]] = {}
        self.objectives: dict[str, Any] = {}
        self.recipes: dict[str, Any] = {}
        self.demo_tasks: dict[str, Any] = {}
        self._owner: dict[tuple[str, str], str] = {}
        for module in CORE_PLUGINS:
            core = importlib.import_module(module)
            name = "xmm-core" if module == CORE_PLUGINS[0] else f"xmm-core:{module.rsplit('.', 2)[-2]}"
            self.register(core, name=name, distribution="xmm-core", version=_version())
        if entry_points:
            self.load_entry_points()

    # -- discovery -------------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        blocked = _blocked()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name in blocked or dist in blocked:
                log.info("xmm plugin %s (%s %s) blocked by XMM_BLOCK_PLUGINS", ep.name, dist, version)
                continue
            if any(p.name == ep.name and p.error is None for p in self.plugins):
                continue  # the same distribution seen twice on sys.path
            try:
                obj = ep.load()
            except Exception as e:  # any import-time failure of third-party code must not take xmm down
                self._fail(PluginInfo(ep.name, dist, version), f"import failed: {type(e).__name__}: {e}", e)
                continue
            self.register(obj, name=ep.name, distribution=dist, version=version)

    def register(self, plugin: object, *, name: str | None = None, distribution: str | None = None, version: str = "0") -> PluginInfo:
        """Register a plugin object (module or instance with hookimpls); conflicts and errors are isolated."""
        name = name or getattr(plugin, "__name__", type(plugin).__name__)
        info = PluginInfo(name, distribution or name, version)
        try:
            self.pm.register(plugin, name=name)
        except Exception as e:
            return self._fail(info, f"registration failed: {type(e).__name__}: {e}", e)
        try:
            found = {kind: self._call(plugin, kind) for kind in KINDS}
        except Exception as e:
            self.pm.unregister(plugin)
            return self._fail(info, f"hook failed: {type(e).__name__}: {e}", e)
        # check every name before adding any, so a conflicting plugin is skipped whole
        for kind, items in found.items():
            for key in items:
                owner = self._owner.get((kind, key))
                if owner is not None:
                    self.pm.unregister(plugin)
                    return self._fail(info, f"{_SINGULAR[kind]} '{key}' is already registered by '{owner}'", None)
        for kind, items in found.items():
            table = getattr(self, kind)
            for key, value in items.items():
                table[key] = value
                self._owner[(kind, key)] = name
            setattr(info, kind, sorted(items))
        self.plugins.append(info)
        return info

    def _call(self, plugin: object, kind: str) -> dict[str, Any]:
        # call this plugin's own implementation (validated by pluggy at register time) so that what it returns
        # can be attributed to it and checked for name conflicts
        caller = getattr(self.pm.hook, f"xmm_{kind}")
        impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
        items: dict[str, Any] = {}
        for impl in impls:
            result = impl.function()
            if result is None:
                continue
            if kind == "modalities":
                items.update({spec.name: spec for spec in result})
            else:
                items.update(dict(result))
        return items

    def _fail(self, info: PluginInfo, message: str, exc: BaseException | None) -> PluginInfo:
        info.error = message
        self.plugins.append(info)
        text = f"xmm plugin '{info.name}' from {info.distribution} {info.version}: {message}"
        if self.strict:
            raise PluginError(text + " (XMM_STRICT_PLUGINS=1)") from exc
        log.warning("%s; skipped", text)
        return info

    # -- lookups ----------------------------------------------------------------------------------------
    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def _get(self, kind: str, name: str) -> Any:
        table = getattr(self, kind)
        if name not in table:
            raise RegistryError(f"no {_SINGULAR[kind]} named '{name}' is registered; known: {sorted(table) or 'none'}"
                                + self._hint(kind))
        return table[name]

    def _hint(self, kind: str) -> str:
        bad = [f"{p.name} ({p.error})" for p in self.failures]
        return f". Plugins that failed to load: {'; '.join(bad)}" if bad else ". Is its plugin installed? See `xmm plugins`."

    def modality(self, name: str) -> Any:
        return self._get("modalities", name)

    def bridge_class(self, name: str) -> type:
        return self._get("bridges", name)

    def projector_class(self, name: str) -> type:
        return self._get("projectors", name)

    def create_encoder(self, name: str, **config: Any) -> Any:
        return self._get("encoders", name)(**config)

    def create_decoder(self, name: str, **config: Any) -> Any:
        return self._get("decoders", name)(**config)

    def objective(self, name: str) -> Any:
        return self._get("objectives", name)

    def recipe(self, name: str) -> Any:
        return self._get("recipes", name)

    def demo_task(self, name: str) -> Any:
        return self._get("demo_tasks", name)

    def create_bridge(self, config: dict[str, Any] | Any) -> Any:
        """Build a bridge from a config dict (with ``type``) or a validated config object."""
        return self._create("bridges", config)

    def create_projector(self, config: dict[str, Any] | Any) -> Any:
        """Build an output projector from a config dict (with ``type``) or a validated config object."""
        return self._create("projectors", config)

    def _create(self, kind: str, config: dict[str, Any] | Any) -> Any:
        # a dict is validated by the class its ``type`` names (errors name the field); an object is used as it is
        name = config.get("type", "") if isinstance(config, dict) else getattr(config, "type", "")
        cls = self._get(kind, str(name))
        if isinstance(config, dict):
            config = validate_config(cls.config_class, config)
        return cls(config)

    def load_saved(self, kind: str, folder: str | os.PathLike[str]) -> Any:
        """Load a ``config.json`` + ``model.safetensors`` folder with the ``kind`` class its saved ``type`` names."""
        folder = Path(folder)
        singular = _SINGULAR[kind]
        cfg = read_config_json(folder, kind=singular)
        try:
            cls = self._get(kind, str(cfg.get("type", "")))
        except RegistryError as e:
            raise IncompatibleCheckpointError(f"{folder / CONFIG_NAME}: {e}") from e
        return cls.from_saved(folder, cfg)

    def owner(self, kind: str, name: str) -> str | None:
        return self._owner.get((kind, name))


_REGISTRY: Registry | None = None
_LOCK = threading.Lock()


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, built on first use (entry points are scanned once)."""
    global _REGISTRY
    with _LOCK:
        if _REGISTRY is None or reload:
            _REGISTRY = Registry()
        return _REGISTRY


def reset_registry() -> None:
    """Forget the process-wide registry (tests; after installing a plugin at run time)."""
    global _REGISTRY
    with _LOCK:
        _REGISTRY = None


def load_bridge(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    download: bool = True,
    registry: Registry | None = None,
    **hub_kwargs: Any,
) -> Bridge:
    """Load a bridge saved with ``save_pretrained`` from a local folder or a Hub repo id (``subfolder``, e.g.
    ``bridges/image``, picks one bridge of a checkpoint repo), with the class its saved ``type`` names.

    A repo id is looked up in the Hugging Face cache and downloaded when missing (``download=False`` or
    ``HF_HUB_OFFLINE=1``: the cache only); ``hub_kwargs`` (``cache_dir``, ``token``) go to the download.
    """
    folder = pretrained.resolve(source, revision=revision, subfolder=subfolder, download=download,
                                must_contain=CONFIG_NAME, what="bridge", **hub_kwargs)
    return (registry or get_registry()).load_saved("bridges", folder)


def load_projector(directory: str | os.PathLike[str], *, registry: Registry | None = None) -> Projector:
    """Load an output projector folder saved with ``save_pretrained``, with the class its saved ``type`` names."""
    folder = Path(directory)
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{folder}: no projector {CONFIG_NAME} there")
    return (registry or get_registry()).load_saved("projectors", folder)


def projector_class(name: str) -> type[Projector]:
    """The projector class registered under ``name`` (core or plugin)."""
    return get_registry().projector_class(name)


def create_projector(config: dict[str, Any] | Any) -> Projector:
    """Build a projector from a config dict with ``type`` (validated; errors name the field) or a config object."""
    return get_registry().create_projector(config)


def _version() -> str:
    from xmm._version import __version__

    return __version__
