"""xmm entry point of xmm-plugin-device: the ``device`` modality, its encoder, command decoder, recipe and demo task."""

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


@hookimpl
def xmm_recipes() -> dict[str, Any]:
    from xmm_plugin_device.recipes import RECIPES

    return dict(RECIPES)


@hookimpl
def xmm_demo_tasks() -> dict[str, Any]:
    from xmm_plugin_device.demo import DEMO_TASKS

    return dict(DEMO_TASKS)
