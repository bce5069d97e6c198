"""The hooks xmm calls (entry point `{{ cookiecutter.modality }}` in group `xmm`, see pyproject.toml)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmm import hookimpl
from xmm.modality import ModalitySpec

from {{ cookiecutter.__package_name }}.encoder import {{ cookiecutter.__class_name }}Encoder
from {{ cookiecutter.__package_name }}.modality import ENCODER_NAME, MODALITY


@hookimpl
def xmm_modalities() -> list[ModalitySpec]:
    return [MODALITY]


@hookimpl
def xmm_encoders() -> dict[str, Callable[..., Any]]:
    # xmm calls the factory with the encoder config from the model config as keyword arguments
    return {ENCODER_NAME: {{ cookiecutter.__class_name }}Encoder}
