"""``device-transformer``: a small, trainable transformer over a window of device-status snapshots.

Each snapshot becomes one token: a linear map of its scaled numerics, presence flags, changes since the previous
snapshot and time-gap features, plus one embedding per categorical feature and a recency embedding (0 = latest).
A pre-norm transformer mixes the snapshots; an optional learned summary token is prepended. There is no pretrained
device encoder, so ``trainable = True``: the X-LLM presets train it with the bridge in the alignment stage and freeze
it afterwards. Weights are saved with :meth:`save_pretrained` (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from xmm.bridges.base import load_state_strict, validate_config
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import CheckpointError, ShapeError
from xmm.io import atomic_write

from xmm_plugin_device.features import (
    DEFAULT_CATEGORICAL,
    DEFAULT_NUMERIC,
    TIME_FEATURES,
    CategoricalFeature,
    NumericFeature,
    featurize,
)
from xmm_plugin_device.loading import load_window
from xmm_plugin_device.schema import DeviceWindow

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ARCH_VERSION = 1
# changes between snapshots are small next to the [0, 1] value range (a 5-point battery drop is 0.05); scaling them
# up lets the optimiser pick them up as fast as the values themselves
CHANGE_SCALE = 10.0


class DeviceEncoderConfig(BaseModel):
    """Settings of :class:`DeviceTransformerEncoder`. ``numeric``/``categorical`` replace the default feature
    sets when given; ``extra_numeric``/``extra_categorical`` add user fields to them."""

    model_config = ConfigDict(extra="forbid")

    d_model: int = Field(default=128, ge=8, le=4096)
    num_layers: int = Field(default=2, ge=0, le=24)
    num_heads: int = Field(default=4, ge=1)
    ff_mult: int = Field(default=2, ge=1, le=8)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_snapshots: int = Field(default=32, ge=1, le=4096)
    numeric_bins: int = Field(default=8, ge=0, le=64, description="piecewise-linear bins per numeric feature (0: off)")
    summary_token: bool = True
    snapshot_tokens: bool = True
    numeric: list[NumericFeature] | None = None
    categorical: list[CategoricalFeature] | None = None
    extra_numeric: list[NumericFeature] = Field(default_factory=list)
    extra_categorical: list[CategoricalFeature] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DeviceEncoderConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if not (self.summary_token or self.snapshot_tokens):
            raise ValueError("at least one of summary_token and snapshot_tokens must be true")
        names = [f.name for f in self.numeric_features] + [f.name for f in self.categorical_features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be unique; repeated: {dup}")
        if not self.numeric_features and not self.categorical_features:
            raise ValueError("the encoder needs at least one numeric or categorical feature")
        return self

    @property
    def numeric_features(self) -> list[NumericFeature]:
        base = list(DEFAULT_NUMERIC) if self.numeric is None else list(self.numeric)
        return base + list(self.extra_numeric)

    @property
    def categorical_features(self) -> list[CategoricalFeature]:
        base = list(DEFAULT_CATEGORICAL) if self.categorical is None else list(self.categorical)
        return base + list(self.extra_categorical)


class DeviceTransformerEncoder(Encoder):
    """Window of T snapshots -> features ``[B, T (+1 summary), d_model]`` with mask ``[B, T (+1)]``."""

    id = "xmm-device-transformer"
    trainable: ClassVar[bool] = True

    def __init__(self, config: DeviceEncoderConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None or isinstance(config, dict):
            config = validate_config(DeviceEncoderConfig, {**(config or {}), **kwargs}, source="device encoder config")
        elif kwargs:
            raise TypeError("pass either a DeviceEncoderConfig or keyword arguments, not both")
        self.config = config
        self.numeric_specs = config.numeric_features
        self.categorical_specs = config.categorical_features
        d = config.d_model
        n = len(self.numeric_specs)
        self.output_dim = d
        self.revision = f"arch{ARCH_VERSION}-{self._config_hash()[:12]}"
        k = config.numeric_bins
        # scaled values (+ their piecewise-linear bins), presence flags, changes and time features of one snapshot
        # -> one d-dim token
        self.input_proj = nn.Linear((3 + k) * n + TIME_FEATURES, d)
        self.cat_embeddings = nn.ModuleList(nn.Embedding(s.vocab_size, d) for s in self.categorical_specs)
        self.recency = nn.Embedding(config.max_snapshots, d)
        self.summary = nn.Parameter(torch.randn(1, 1, d) * 0.02) if config.summary_token else None
        # the summary token also sees window statistics (latest, first->latest change, min, max, presence, span,
        # length), so window-level facts such as "draining" need no multi-hop attention to be read off
        self.summary_proj = nn.Linear((5 + k) * n + 2, d) if config.summary_token else None
        layer = nn.TransformerEncoderLayer(
            d, config.num_heads, d * config.ff_mult, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = (
            nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False) if config.num_layers else None
        )
        self.norm = nn.LayerNorm(d)
        # embeddings on the scale of input_proj's output (~0.3 per dim for [0, 1] inputs): N(0, 1) rows would drown
        # the numeric features, tiny ones would hide the categories until training grows them
        for emb in self.cat_embeddings:
            nn.init.normal_(emb.weight, std=0.3)
        nn.init.normal_(self.recency.weight, std=0.02)

    # -- identity ------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """JSON-able keyword arguments that rebuild this encoder (``DeviceTransformerEncoder(**config_dict())``)."""
        return self.config.model_dump(mode="json", exclude_defaults=True)

    def _config_hash(self) -> str:
        text = json.dumps(self.config.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "max_snapshots": self.config.max_snapshots,
            "numeric": [f.model_dump() for f in self.numeric_specs],
            "categorical": [f.model_dump() for f in self.categorical_specs],
        }

    @property
    def num_numeric(self) -> int:
        return len(self.numeric_specs)

    # -- contract -------------------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """A :class:`DeviceWindow` (or anything ``load_window`` reads) -> per-snapshot tensors, the last
        ``max_snapshots`` snapshots: ``numeric/present/delta [T, N]``, ``time [T, 3]``, ``categorical [T, C]``."""
        window = raw if isinstance(raw, DeviceWindow) else load_window(raw, max_snapshots=self.config.max_snapshots)
        snaps = window.snapshots[-self.config.max_snapshots :]
        return featurize(snaps, self.numeric_specs, self.categorical_specs)

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad windows to the longest; ``lengths [B]`` always present so padding is never mistaken for data."""
        out = super().collate(items)
        if "lengths" not in out:
            out["lengths"] = torch.tensor([it["numeric"].shape[0] for it in items], dtype=torch.long)
        return out

    def forward(
        self,
        numeric: torch.Tensor,
        present: torch.Tensor,
        delta: torch.Tensor,
        time: torch.Tensor,
        categorical: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """Batched features ``[B, T, N]``/``[B, T, 3]``/``[B, T, C]`` -> ``EncoderOutput`` ``[B, T', d_model]`` where
        ``T' = T + 1`` with the summary token (first), ``1`` with the summary token only, else ``T``."""
        if numeric.dim() != 3 or numeric.shape[-1] != self.num_numeric:
            raise ShapeError(f"{type(self).__name__}: numeric must be [B, T, {self.num_numeric}], got {tuple(numeric.shape)}")
        b, t, _ = numeric.shape
        if categorical.shape != (b, t, len(self.categorical_specs)):
            raise ShapeError(
                f"{type(self).__name__}: categorical must be [B, T, {len(self.categorical_specs)}] = "
                f"{(b, t, len(self.categorical_specs))}, got {tuple(categorical.shape)}"
            )
        dtype = self.input_proj.weight.dtype
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=numeric.device)
        steps = torch.arange(t, device=numeric.device)
        mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        x = self.input_proj(torch.cat([numeric, self._bins(numeric, present), present, delta * CHANGE_SCALE, time], dim=-1).to(dtype))
        for j, emb in enumerate(self.cat_embeddings):
            x = x + emb(categorical[..., j])
        # recency index: 0 for each window's latest snapshot, counting back; padding clamps harmlessly (masked)
        recency = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(0, self.config.max_snapshots - 1)
        x = x + self.recency(recency)
        if self.summary is not None:
            stats = self._window_stats(numeric, present, time, lengths, mask).to(dtype)
            summary = self.summary.to(x.dtype) + self.summary_proj(stats).unsqueeze(1)
            x = torch.cat([summary.to(x.dtype), x], dim=1)
            mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)
        if self.transformer is not None:
            x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask.unsqueeze(-1)
        if not self.config.snapshot_tokens:
            x, mask = x[:, :1], mask[:, :1]
        return EncoderOutput(x, mask)

    def _bins(self, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear encoding ``[..., N] -> [..., N * K]`` (Gorishniy et al., 2022): bin ``j`` of a scaled
        value ``x`` is ``clamp(K x - j, 0, 1)``, so a threshold anywhere in the range is nearly linear to read."""
        k = self.config.numeric_bins
        if not k:
            return values.new_zeros(*values.shape[:-1], 0)
        edges = torch.arange(k, device=values.device, dtype=values.dtype)
        bins = (values.unsqueeze(-1) * k - edges).clamp(0.0, 1.0) * present.unsqueeze(-1)
        return bins.flatten(-2)

    def _window_stats(
        self, numeric: torch.Tensor, present: torch.Tensor, time: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Per window ``[B, (5 + K)N + 2]``: latest values and their bins, change first->latest (x CHANGE_SCALE),
        min, max, presence anywhere, log time span, length / max_snapshots."""
        b = numeric.shape[0]
        rows = torch.arange(b, device=numeric.device)
        last = (lengths - 1).clamp(min=0)
        latest, first = numeric[rows, last], numeric[:, 0]
        both = present[rows, last] * present[:, 0]
        valid = (present > 0) & mask.unsqueeze(-1)
        big = torch.finfo(numeric.dtype).max
        lo = numeric.masked_fill(~valid, big).amin(1)
        hi = numeric.masked_fill(~valid, -big).amax(1)
        seen = valid.any(1)
        lo, hi = lo.masked_fill(~seen, 0.0), hi.masked_fill(~seen, 0.0)
        span = time[:, 0, 1:2]  # log age of the first snapshot relative to the latest
        size = (lengths.to(numeric.dtype) / self.config.max_snapshots).unsqueeze(1)
        change = (latest - first) * both * CHANGE_SCALE
        bins = self._bins(latest, present[rows, last])
        return torch.cat([latest, bins, change, lo, hi, seen.to(numeric.dtype), span, size], dim=1)

    # -- persistence ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` (rebuild kwargs, id, revision) and ``model.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt", "xmm_encoder": self.id}))
        meta = {"encoder": "device-transformer", "id": self.id, "revision": self.revision, "config": self.config_dict()}
        atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> DeviceTransformerEncoder:
        """Rebuild from :meth:`save_pretrained`'s folder and load its weights strictly."""
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / CONFIG_NAME).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{directory / CONFIG_NAME}: cannot read device encoder config: {e}") from e
        encoder = cls(validate_config(DeviceEncoderConfig, meta.get("config", {}), source=str(directory / CONFIG_NAME)))
        if meta.get("revision") not in (None, encoder.revision):
            raise CheckpointError(f"{directory}: saved revision {meta['revision']} does not match the rebuilt {encoder.revision}")
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: cannot read device encoder weights: {e}") from e
        load_state_strict(encoder, state, source=directory / WEIGHTS_NAME)
        return encoder
