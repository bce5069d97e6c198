"""Entry point of xmm-plugin-image (group ``xmm``, name ``image``): the ``image`` modality, three encoders, its recipe
and demo task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmm import hookimpl


@hookimpl
def xmm_modalities() -> list[Any]:
    from xmm_plugin_image.modality import image_spec

    return [image_spec()]


@hookimpl
def xmm_encoders() -> dict[str, Callable[..., Any]]:
    # the factories import torch/timm/transformers only when called, so `xmm plugins` stays fast
    from xmm_plugin_image.encoders import ENCODER_FACTORIES

    return dict(ENCODER_FACTORIES)


@hookimpl
def xmm_recipes() -> dict[str, Any]:
    from xmm_plugin_image.recipes import RECIPES

    return dict(RECIPES)


@hookimpl
def xmm_demo_tasks() -> dict[str, Any]:
    from xmm_plugin_image.demo import DEMO_TASKS

    return dict(DEMO_TASKS)
