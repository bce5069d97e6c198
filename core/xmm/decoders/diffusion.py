"""The ``diffusers`` decoder: any diffusers text-to-image / -audio / -video pipeline that accepts ``prompt_embeds``
(Stable Diffusion, AudioLDM, Zeroscope's TextToVideoSD...), conditioned on projected signal-token states instead of
its own text encoder's output. diffusers is the optional extra ``xmm-core[diffusers]``, imported only here, lazily.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from xmm.decoder import Decoder, DecoderOutput
from xmm.decoders._registry import register_decoder
from xmm.decoders.media import save_audio, save_image, save_video
from xmm.errors import ConfigError, MissingDependencyError, ModelNotFoundError, ShapeError
from xmm.persist import validate_config

# NExT-GPT writes <IMG0>...; xmm keeps one style: <img_0>, <aud_0>, <vid_0>
_SIGNAL_PREFIX = {"image": "img", "audio": "aud", "video": "vid"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DiffusersDecoderConfig(BaseModel):
    """How to run the pipeline. ``pipeline`` is a diffusers pipeline object, a local pipeline folder or a Hub id
    (the Hub needs network or its cache). Everything else is passed to the pipeline call."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    pipeline: Any = Field(description="DiffusionPipeline object, local folder or Hub id")
    modality: Literal["image", "audio", "video"] | None = Field(None, description="default: from the pipeline class")
    num_inference_steps: int = Field(25, gt=0)
    guidance_scale: float | None = Field(None, ge=0.0, description="default: the pipeline's own default")
    negative: Literal["unconditional", "zeros"] = Field(
        "unconditional", description="negative conditioning for classifier-free guidance: the text encoder's "
        "embedding of the empty prompt, or zeros"
    )
    height: int | None = Field(None, gt=0)
    width: int | None = Field(None, gt=0)
    seed: int | None = Field(0, description="seed of the sampling noise; None = not seeded")
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    fps: int = Field(8, gt=0, description="frame rate of saved videos")
    call_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra pipeline call arguments")


def _require_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as e:
        raise MissingDependencyError("diffusers", extra="diffusers", purpose="the diffusers decoder") from e
    return diffusers


def load_pipeline(source: str | os.PathLike[str], *, dtype: str | None = None) -> Any:
    """Load a diffusers pipeline from a local folder (``model_index.json``) or a Hub id."""
    diffusers = _require_diffusers()
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["torch_dtype"] = _DTYPES[dtype]
    try:
        return diffusers.DiffusionPipeline.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"cannot load the diffusers pipeline '{source}': {e}. Offline, give a local pipeline folder (one with "
            f"model_index.json) or a pipeline object."
        ) from e


@register_decoder("diffusers")
class DiffusersDecoder(Decoder):
    """Feeds conditioning ``[B, T, D]`` as ``prompt_embeds`` to a diffusers pipeline; one output per item.

    ``condition_shape`` ``(T, D)`` is what the pipeline's own text encoder produces (e.g. 77 x 1024 for Stable
    Diffusion 2 / Zeroscope, 1 x 512 for AudioLDM, whose embedding is one vector). :meth:`text_condition` gives that
    encoder's embedding of captions: the target of the decoder-side alignment loss. The pipeline is frozen; it is a
    plain attribute (not a submodule), so its weights never enter the model's state dict, but ``.to()`` moves it.
    """

    id = "diffusers"
    input_kind = "conditioning"

    def __init__(self, pipeline: Any = None, **config: Any) -> None:
        super().__init__()
        if pipeline is not None:
            config["pipeline"] = pipeline
        self.config = validate_config(DiffusersDecoderConfig, config)
        pipe = self.config.pipeline
        if isinstance(pipe, (str, os.PathLike)):
            self.source = str(pipe)
            pipe = load_pipeline(pipe, dtype=self.config.dtype)
        else:
            self.source = None
        if not callable(pipe) or not hasattr(pipe, "components"):
            raise ConfigError(f"expected a diffusers pipeline, got {type(pipe).__name__}", field="pipeline")
        if "prompt_embeds" not in inspect.signature(pipe.__call__).parameters:
            raise ConfigError(f"{type(pipe).__name__} does not accept prompt_embeds, so it cannot be conditioned by a "
                              f"projector", field="pipeline")
        if not (hasattr(pipe, "encode_prompt") or hasattr(pipe, "_encode_prompt")):
            raise ConfigError(f"{type(pipe).__name__} has no encode_prompt: its text conditioning is unknown", field="pipeline")
        self.pipeline = pipe
        for module in self._modules_of_pipeline():
            module.requires_grad_(False)
            module.eval()
        if self.config.device is not None:
            pipe.to(self.config.device)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        self.modality = self.config.modality or _infer_modality(pipe)
        self.signal_prefix = _SIGNAL_PREFIX[self.modality]
        self.id = f"diffusers:{type(pipe).__name__}"
        pipe_config = getattr(pipe, "config", None) or {}
        self.revision = str(pipe_config.get("_name_or_path") or self.source or "in-memory")
        self._uncond: torch.Tensor | None = None
        self._flat_embeds = False  # True when the pipeline takes [B, D] (AudioLDM), not [B, T, D]

    # -- the pipeline's own text conditioning ------------------------------------------------------------------
    def _device(self) -> torch.device:
        return getattr(self.pipeline, "device", torch.device("cpu"))

    def _dtype(self) -> torch.dtype:
        return getattr(self.pipeline, "dtype", torch.float32)

    @torch.no_grad()
    def text_condition(self, captions: list[str]) -> torch.Tensor:
        """The pipeline's text encoder embedding of ``captions``: ``[B, T, D]`` (what ``prompt=`` would condition on)."""
        pipe = self.pipeline
        captions = list(captions)
        # the pipeline's own prompt encoding, guidance off: positional (prompt, device, n_per_prompt, cfg) is common
        # to encode_prompt (SD, TextToVideoSD) and AudioLDM's _encode_prompt
        encode = pipe.encode_prompt if hasattr(pipe, "encode_prompt") else pipe._encode_prompt
        out = encode(captions, self._device(), 1, False)
        embeds = out[0] if isinstance(out, (tuple, list)) else out
        if embeds.dim() == 2:
            self._flat_embeds = True
            embeds = embeds.unsqueeze(1)
        if embeds.dim() != 3:
            raise ShapeError(f"{type(pipe).__name__}'s prompt encoding has shape {tuple(embeds.shape)}; expected [B, T, D]")
        return embeds

    def unconditional(self) -> torch.Tensor:
        """The embedding of the empty prompt ``[1, T, D]`` (cached): the usual negative for classifier-free guidance."""
        if self._uncond is None:
            self._uncond = self.text_condition([""])
        return self._uncond.to(self._device())

    @property
    def condition_shape(self) -> tuple[int, int]:  # type: ignore[override]
        t, d = self.unconditional().shape[1:]
        return int(t), int(d)

    # -- decoding ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, conditioning: torch.Tensor | None = None, *, text: list[str] | None = None, **kwargs: Any) -> DecoderOutput:
        """Run the pipeline on ``conditioning [B, T, D]``; ``kwargs`` override the configured call arguments."""
        if conditioning is None:
            raise ShapeError("the diffusers decoder needs conditioning [B, T, D] (the projected signal-token states)")
        t, d = self.condition_shape
        if conditioning.dim() != 3 or tuple(conditioning.shape[1:]) != (t, d):
            raise ShapeError(f"{self.id} expects conditioning of shape [B, {t}, {d}], got {tuple(conditioning.shape)}")
        b = conditioning.shape[0]
        cond = conditioning.detach().to(device=self._device(), dtype=self._dtype())
        if self.config.negative == "zeros":
            neg = torch.zeros_like(cond)
        else:
            neg = self.unconditional().to(cond.dtype).expand(b, -1, -1).clone()
        if self._flat_embeds:
            cond, neg = cond[:, 0], neg[:, 0]
        call: dict[str, Any] = {"num_inference_steps": self.config.num_inference_steps}
        if self.config.guidance_scale is not None:
            call["guidance_scale"] = self.config.guidance_scale
        if self.config.height is not None:
            call["height"] = self.config.height
        if self.config.width is not None:
            call["width"] = self.config.width
        if self.config.seed is not None:
            call["generator"] = torch.Generator(device="cpu").manual_seed(self.config.seed)
        call.update(self.config.call_kwargs)
        call.update(kwargs)
        result = self.pipeline(prompt_embeds=cond, negative_prompt_embeds=neg, **call)
        outputs = self._split_outputs(result, b)
        info: dict[str, Any] = {"pipeline": type(self.pipeline).__name__}
        if self.modality == "audio":
            info["sampling_rate"] = self.sampling_rate
        return DecoderOutput(self.modality, outputs, info)

    def _split_outputs(self, result: Any, batch: int) -> list[Any]:
        for name in ("images", "audios", "frames", "videos"):
            value = getattr(result, name, None)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.detach().float().cpu().numpy()
            items = [value[i] for i in range(len(value))]
            if len(items) != batch:
                raise ShapeError(f"{type(self.pipeline).__name__} returned {len(items)} {name} for a batch of {batch}")
            return items
        raise ShapeError(f"{type(self.pipeline).__name__} returned {type(result).__name__} without images/audios/frames")

    # -- files ----------------------------------------------------------------------------------------------
    @property
    def sampling_rate(self) -> int:
        vocoder = getattr(self.pipeline, "vocoder", None)
        rate = getattr(getattr(vocoder, "config", None), "sampling_rate", None)
        return int(rate or 16000)

    def save_output(self, output: Any, path_stem: str | Path) -> Path:
        """Image -> ``.png``, audio -> ``.wav`` (the vocoder's sampling rate), video -> ``.mp4`` (``.gif`` without PyAV)."""
        if self.modality == "image":
            return save_image(output, path_stem)
        if self.modality == "audio":
            return save_audio(output, path_stem, self.sampling_rate)
        frames = np.asarray(output) if not isinstance(output, list) else output
        if isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] not in (1, 3, 4) and frames.shape[1] in (1, 3, 4):
            frames = frames.transpose(0, 2, 3, 1)  # [F, C, H, W] -> [F, H, W, C]
        return save_video(frames, path_stem, fps=self.config.fps)

    def describe_output(self, output: Any) -> dict[str, Any]:
        """``{"modality", "kind": "media", "shape": [...]}`` (an image's ``[H, W, C]``, a waveform's ``[N]``...)."""
        shape = [output.size[1], output.size[0], len(output.getbands())] if hasattr(output, "getbands") else list(np.shape(output))
        out: dict[str, Any] = {"modality": self.modality, "kind": self.output_kind, "shape": [int(n) for n in shape]}
        if self.modality == "audio":
            out["sampling_rate"] = self.sampling_rate
        return out

    # -- module plumbing ------------------------------------------------------------------------------------------
    def _modules_of_pipeline(self) -> list[torch.nn.Module]:
        return [m for m in self.pipeline.components.values() if isinstance(m, torch.nn.Module)]

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> DiffusersDecoder:
        # .to()/.cuda()/.half() on the model reach the pipeline's modules, which are not registered submodules
        for module in self._modules_of_pipeline():
            module._apply(fn, *args, **kwargs)
        self._uncond = None
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> DiffusersDecoder:
        # the decoder is frozen: model.train() must not switch dropout etc. on inside the pipeline
        return super().train(False)

    def num_parameters(self) -> int:
        """All (frozen) parameters of the pipeline's modules."""
        return sum(p.numel() for m in self._modules_of_pipeline() for p in m.parameters())

    def rebuild_config(self) -> dict[str, Any] | None:
        """Keyword arguments that rebuild this decoder from the registry (``None`` for an in-memory pipeline)."""
        if self.source is None:
            return None
        return {"pipeline": self.source, **self.config.model_dump(mode="json", exclude={"pipeline"}, exclude_defaults=True)}

    def describe(self) -> dict[str, Any]:
        """JSON-able record for checkpoint manifests (the pipeline source is recorded when it was a path/id)."""
        cfg = self.config.model_dump(mode="json", exclude={"pipeline"})
        return {"name": "diffusers", "pipeline": self.source, "pipeline_class": type(self.pipeline).__name__, "config": cfg}


def _infer_modality(pipe: Any) -> Literal["image", "audio", "video"]:
    name = type(pipe).__name__.lower()
    if "audio" in name or "music" in name or hasattr(pipe, "vocoder"):
        return "audio"
    if "video" in name:
        return "video"
    return "image"
