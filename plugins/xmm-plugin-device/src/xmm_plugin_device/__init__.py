"""xmm-plugin-device: terminal device status as an LLM modality (X-LLM), with command decoding.

Inputs: :class:`DeviceStatus` snapshots / :class:`DeviceWindow` time windows (``load_window``). Encoder:
``device-transformer`` (trainable). Decoder: ``device-command`` (text -> validated :class:`DeviceCommand`, sent to an
:class:`Executor`; :class:`DryRunExecutor` by default). Data: :mod:`xmm_plugin_device.synthetic`.

Names are imported on first use, so that the data generator and the loader do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "COMMANDS": "commands", "CommandError": "commands", "DeviceCommand": "commands", "find_command": "commands",
    "parse_command": "commands",
    "CommandResult": "decoder", "DeviceCommandDecoder": "decoder",
    "DeviceEncoderConfig": "encoder", "DeviceTransformerEncoder": "encoder",
    "DryRunExecutor": "executor", "ExecutionResult": "executor", "Executor": "executor",
    "CategoricalFeature": "features", "NumericFeature": "features",
    "load_window": "loading",
    "DEVICE": "modality", "make_device_modality": "modality",
    "DeviceStatus": "schema", "DeviceWindow": "schema",
}

__all__ = [
    "COMMANDS", "DEVICE", "CategoricalFeature", "CommandError", "CommandResult", "DeviceCommand",
    "DeviceCommandDecoder", "DeviceEncoderConfig", "DeviceStatus", "DeviceTransformerEncoder", "DeviceWindow",
    "DryRunExecutor", "ExecutionResult", "Executor", "NumericFeature", "__version__", "find_command",
    "load_window", "make_device_modality", "parse_command",
]

if TYPE_CHECKING:
    from xmm_plugin_device.commands import COMMANDS, CommandError, DeviceCommand, find_command, parse_command
    from xmm_plugin_device.decoder import CommandResult, DeviceCommandDecoder
    from xmm_plugin_device.encoder import DeviceEncoderConfig, DeviceTransformerEncoder
    from xmm_plugin_device.executor import DryRunExecutor, ExecutionResult, Executor
    from xmm_plugin_device.features import CategoricalFeature, NumericFeature
    from xmm_plugin_device.loading import load_window
    from xmm_plugin_device.modality import DEVICE, make_device_modality
    from xmm_plugin_device.schema import DeviceStatus, DeviceWindow


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xmm_plugin_device' has no attribute {name!r}")
    return getattr(importlib.import_module(f"xmm_plugin_device.{module}"), name)
