"""``ConfigModule``: an ``nn.Module`` built from one pydantic config and saved as a folder of ``config.json`` +
``model.safetensors``. Bridges and output projectors share it; finding the class of a saved folder by its ``type``
is the registry's job (``xmm.registry.load_bridge`` / ``load_projector``), not this one's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel
from torch import nn

from xmm.errors import CheckpointError, ConfigError
from xmm.persist.files import CONFIG_NAME, load_weights_dir, read_config_json, save_module_dir, validate_config

M = TypeVar("M", bound="ConfigModule")


class ConfigModule(nn.Module):
    """A module fully described by ``self.config`` (an instance of ``config_class``, with a ``type`` field).

    Subclasses set ``config_class`` and ``kind`` (``"bridge"``, ``"projector"``: used in file metadata and
    messages) and say which ``type`` they load through :meth:`saved_type`; an abstract base returns ``""``.
    """

    config_class: ClassVar[type[BaseModel]] = BaseModel
    kind: ClassVar[str] = "module"

    def __init__(self, config: BaseModel) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @classmethod
    def saved_type(cls) -> str:
        """The ``type`` a saved config of this class has: the default of its config's ``type`` field (fixed with a
        ``Literal`` by concrete classes); ``""`` for an abstract base, whose ``type`` has no default."""
        field = cls.config_class.model_fields.get("type")
        default = field.default if field is not None else None
        return default if isinstance(default, str) else ""

    @classmethod
    def from_config(cls: type[M], config: BaseModel | dict[str, Any], *, source: str | None = None) -> M:
        """Build from a config object or a dict (validated; a bad field raises :class:`ConfigError` naming it)."""
        if isinstance(config, dict):
            config = validate_config(cls.config_class, config, source=source)
        return cls(config)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (this module's weights only) into ``directory``."""
        return save_module_dir(self, self.config, directory, kind=self.kind)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike[str]) -> M:
        """Load a folder written by :meth:`save_pretrained` into this class (strict keys and shapes)."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise CheckpointError(f"{directory}: no {cls.kind} {CONFIG_NAME} there")
        cfg = read_config_json(directory, kind=cls.kind)
        want = cls.saved_type()
        if not want:
            raise CheckpointError(
                f"{directory}: {cls.__name__} is a base class and cannot say which {cls.kind} type to build; load the "
                f"folder with xmm.registry.load_{cls.kind}(), which finds the class by its saved type"
            )
        if cfg.get("type") != want:
            raise CheckpointError(
                f"{directory}: {cls.kind} type '{cfg.get('type')}' cannot be loaded as {cls.__name__} ('{want}')"
            )
        return cls.from_saved(directory, cfg)

    @classmethod
    def from_saved(cls: type[M], directory: str | os.PathLike[str], config: dict[str, Any]) -> M:
        """Build from ``config`` (the folder's ``config.json``, already read and known to be of this class's type)
        and load ``directory``'s weights strictly."""
        directory = Path(directory)
        module = cls.from_config(config, source=str(directory / CONFIG_NAME))
        load_weights_dir(module, directory, kind=cls.kind)
        return module
