"""The ``device`` modality: how ``<device>`` inputs are loaded, fingerprinted and encoded by default."""

from __future__ import annotations

from functools import partial
from typing import Any

from xmm.modality import ModalitySpec

from xmm_plugin_device.loading import DEFAULT_MAX_SNAPSHOTS, load_window
from xmm_plugin_device.schema import DeviceStatus

# one device token per telemetry feature through LLaVA's MLP, plus 8 question-guided tokens: the bridge reads the
# question and looks up the features it needs, which a small frozen LLM cannot do by itself over many media tokens;
# 8 cover a command up to its argument (e.g. the app of close_app). Measured effect: plugin README.
DEFAULT_BRIDGE: dict[str, Any] = {"type": "guided-mlp", "num_layers": 2, "guided_tokens": 8, "position_embeddings": 64}


def window_fingerprint(raw: Any, *, schema: type[DeviceStatus] = DeviceStatus, max_snapshots: int = DEFAULT_MAX_SNAPSHOTS) -> str:
    """sha256 of the canonical JSON of the validated window: the same telemetry in another format or unit hashes
    the same, which is what the feature cache wants."""
    return load_window(raw, schema=schema, max_snapshots=max_snapshots).fingerprint()


def make_device_modality(
    name: str = "device",
    *,
    schema: type[DeviceStatus] = DeviceStatus,
    max_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
    encoder_config: dict[str, Any] | None = None,
    description: str = "",
) -> ModalitySpec:
    """A device-status modality; a user with a :class:`DeviceStatus` subclass registers their own with it."""
    return ModalitySpec(
        name=name,
        placeholder=f"<{name}>",
        load=partial(load_window, schema=schema, max_snapshots=max_snapshots),
        encoder="device-transformer",
        encoder_config=dict(encoder_config or {"max_snapshots": max_snapshots}),
        bridge=dict(DEFAULT_BRIDGE),
        file_extensions=(".json", ".jsonl", ".ndjson"),
        description=description or "terminal device status (battery, temperature, load, network, screen...) over time",
        fingerprint=partial(window_fingerprint, schema=schema, max_snapshots=max_snapshots),
    )


DEVICE = make_device_modality()
