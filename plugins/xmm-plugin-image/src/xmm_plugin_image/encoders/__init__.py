"""Image encoders and their registry factories.

Registry names: ``efficientnet-lite0`` (default, offline, real ImageNet weights), ``timm`` (any timm model) and
``hf-vision`` (any transformers vision model). Each factory validates its keyword arguments with the encoder's
pydantic config (a bad field raises :class:`xmm.errors.ConfigError` naming it). With ``share=True`` the factory
returns one frozen instance per (name, config) for the whole process, which is how the video plugin runs its frames
through the same encoder object as the image modality.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xmm.encoder import Encoder

# torch, timm and transformers are imported only when a factory is called, so listing plugins stays fast
_SHARED: weakref.WeakValueDictionary[str, Encoder] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _factory(name: str, module: str, cls_name: str, config_name: str) -> Callable[..., Encoder]:
    def create(**kwargs: Any) -> Encoder:
        import importlib

        from xmm.persist import validate_config

        mod = importlib.import_module(module)
        config = validate_config(getattr(mod, config_name), kwargs)
        cls = getattr(mod, cls_name)
        if not config.share:
            return cls(config)
        key = name + ":" + json.dumps(config.model_dump(mode="json", exclude={"share"}), sort_keys=True)
        with _SHARED_LOCK:
            enc = _SHARED.get(key)
            if enc is None or not enc.frozen:  # an unfrozen (being trained) instance is nobody else's to reuse
                enc = cls(config)
                _SHARED[key] = enc
            return enc

    create.__name__ = f"create_{name.replace('-', '_')}"
    create.__doc__ = f"Build the '{name}' image encoder from keyword arguments ({module}.{config_name})."
    return create


ENCODER_FACTORIES: dict[str, Callable[..., Encoder]] = {
    "efficientnet-lite0": _factory(
        "efficientnet-lite0", "xmm_plugin_image.encoders.efficientnet", "EfficientNetLiteEncoder", "EfficientNetLiteConfig"
    ),
    "timm": _factory("timm", "xmm_plugin_image.encoders.timm_encoder", "TimmEncoder", "TimmEncoderConfig"),
    "hf-vision": _factory("hf-vision", "xmm_plugin_image.encoders.hf_vision", "HFVisionEncoder", "HFVisionConfig"),
}


def create_image_encoder(name: str = "efficientnet-lite0", **config: Any) -> Encoder:
    """Build one of this plugin's encoders directly (without the registry)."""
    from xmm.errors import RegistryError

    if name not in ENCODER_FACTORIES:
        raise RegistryError(f"no image encoder named '{name}'; known: {sorted(ENCODER_FACTORIES)}")
    return ENCODER_FACTORIES[name](**config)


__all__ = ["ENCODER_FACTORIES", "create_image_encoder"]
