"""xmm entry point of xmm-plugin-device: the ``device`` modality, its encoder and its command decoder."""

from __future__ import annotations

from typing import Any

from xmm import hookimpl


@hookimpl
def xmm_modalities() -> list[Any]:
    from xmm_plugin_device.modality import DEVICE

    return [DEVICE]


@hookimpl
def xmm_encoders() -> dict[str, Any]:
    from xmm_plugin_device.encoder import DeviceTransformerEncoder

    return {"device-transformer": DeviceTransformerEncoder}


@hookimpl
def xmm_decoders() -> dict[str, Any]:
    from xmm_plugin_device.decoder import DeviceCommandDecoder

    return {"device-command": DeviceCommandDecoder}
