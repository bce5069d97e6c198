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
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import CheckpointError, ShapeError
from xmm.io import atomic_write
from xmm.persist import CONFIG_NAME, WEIGHTS_NAME, load_weights_dir, read_config_json, validate_config

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

ARCH_VERSION = 2
# changes between snapshots are small next to the [0, 1] value range (a 5-point battery drop is 0.05); scaling them
# up lets the optimiser pick them up as fast as the values themselves
CHANGE_SCALE = 10.0


class DeviceEncoderConfig(BaseModel):
    """Settings of :class:`DeviceTransformerEncoder`. ``numeric``/``categorical`` replace the default feature
    sets when given; ``extra_numeric``/``extra_categorical`` add user fields to them.

    ``layout="features"`` (default): one token per feature (FT-Transformer style) summarising it over the window
    (latest value, its bins, change first->latest, min, max) plus one window token; ``snapshot_tokens`` appends one
    token per snapshot. ``layout="snapshots"``: one token per snapshot, with a summary token first when
    ``summary_token``."""

    model_config = ConfigDict(extra="forbid")

    layout: Literal["features", "snapshots"] = "features"
    d_model: int = Field(default=128, ge=8, le=4096)
    num_layers: int = Field(default=2, ge=0, le=24)
    num_heads: int = Field(default=4, ge=1)
    ff_mult: int = Field(default=2, ge=1, le=8)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    max_snapshots: int = Field(default=32, ge=1, le=4096)
    numeric_bins: int = Field(default=8, ge=0, le=64, description="piecewise-linear bins per numeric feature (0: off)")
    value_bins: int = Field(default=20, ge=0, le=1000, description="'features' layout: uniform bins of the latest "
                            "value and of its change, each with a learned embedding (0: off)")
    summary_token: bool = True
    snapshot_tokens: bool | None = Field(default=None, description="default: False for 'features', True for 'snapshots'")
    numeric: list[NumericFeature] | None = None
    categorical: list[CategoricalFeature] | None = None
    extra_numeric: list[NumericFeature] = Field(default_factory=list)
    extra_categorical: list[CategoricalFeature] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> DeviceEncoderConfig:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.layout == "snapshots" and not (self.summary_token or self.use_snapshot_tokens):
            raise ValueError("at least one of summary_token and snapshot_tokens must be true")
        names = [f.name for f in self.numeric_features] + [f.name for f in self.categorical_features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be unique; repeated: {dup}")
        if not self.numeric_features and not self.categorical_features:
            raise ValueError("the encoder needs at least one numeric or categorical feature")
        return self

    @property
    def use_snapshot_tokens(self) -> bool:
        return self.layout == "snapshots" if self.snapshot_tokens is None else self.snapshot_tokens

    @property
    def numeric_features(self) -> list[NumericFeature]:
        base = list(DEFAULT_NUMERIC) if self.numeric is None else list(self.numeric)
        return base + list(self.extra_numeric)

    @property
    def categorical_features(self) -> list[CategoricalFeature]:
        base = list(DEFAULT_CATEGORICAL) if self.categorical is None else list(self.categorical)
        return base + list(self.extra_categorical)


class DeviceTransformerEncoder(Encoder):
    """Window of T snapshots (N numeric, C categorical features) -> features ``[B, T', d_model]``, mask ``[B, T']``.

    ``T' = 1 + N + C`` (window token, then one token per feature) in the ``features`` layout, plus ``T`` with
    snapshot tokens; ``T + 1`` (summary first) or ``T`` in the ``snapshots`` layout. Padded snapshots are masked.
    """

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
        d, n, k = config.d_model, len(self.numeric_specs), config.numeric_bins
        self.output_dim = d
        self.revision = f"arch{ARCH_VERSION}-{self._config_hash()[:12]}"
        self.cat_embeddings = nn.ModuleList(nn.Embedding(s.vocab_size, d) for s in self.categorical_specs)
        # embeddings on the scale of the projected numerics (~0.3 per dim for [0, 1] inputs): N(0, 1) rows would
        # drown the numeric features, tiny ones would hide the categories until training grows them
        for emb in self.cat_embeddings:
            nn.init.normal_(emb.weight, std=0.3)
        self.by_feature = config.layout == "features"
        self.snapshot_tokens = config.use_snapshot_tokens
        if self.by_feature:
            # FT-Transformer-style tokenizer: each numeric feature has its own map from its window statistics
            # (latest, bins, change, min, max, present) to a token; its bias doubles as the feature's identity
            width = 5 + k
            self.feature_weight = nn.Parameter(torch.randn(n, width, d) / math.sqrt(width))
            self.feature_bias = nn.Parameter(torch.randn(n, d) * 0.3)
            if config.value_bins:
                # a free vector per value bin (and per change bin) makes a threshold as easy to read as a category
                self.value_embedding = nn.Embedding(n * (config.value_bins + 1), d)
                self.change_embedding = nn.Embedding(n * config.value_bins, d)
                nn.init.normal_(self.value_embedding.weight, std=0.3)
                nn.init.normal_(self.change_embedding.weight, std=0.3)
        if self.by_feature or config.summary_token:
            self.summary = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            # the window token sees all statistics (and the span and length of the window), so window-level facts
            # such as "draining" need no multi-hop attention to be read off
            self.summary_proj = nn.Linear((5 + k) * n + 2, d)
        if self.snapshot_tokens or not self.by_feature:
            # scaled values (+ bins), presence flags, changes and time features of one snapshot -> one token
            self.input_proj = nn.Linear((3 + k) * n + TIME_FEATURES, d)
            self.recency = nn.Embedding(config.max_snapshots, d)
            nn.init.normal_(self.recency.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, config.num_heads, d * config.ff_mult, config.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = (
            nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False) if config.num_layers else None
        )
        self.norm = nn.LayerNorm(d)

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

    def num_output_tokens(self) -> int | None:
        """``1 + N + C`` in the ``features`` layout; with snapshot tokens it follows the window's length (None)."""
        if self.by_feature and not self.snapshot_tokens:
            return 1 + len(self.numeric_specs) + len(self.categorical_specs)
        return None

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
        """Batched features ``numeric/present/delta [B, T, N]``, ``time [B, T, 3]``, ``categorical [B, T, C]``,
        ``lengths [B]`` -> ``EncoderOutput`` (see the class docstring for the token layout)."""
        if numeric.dim() != 3 or numeric.shape[-1] != self.num_numeric:
            raise ShapeError(f"{type(self).__name__}: numeric must be [B, T, {self.num_numeric}], got {tuple(numeric.shape)}")
        b, t, _ = numeric.shape
        if categorical.shape != (b, t, len(self.categorical_specs)):
            raise ShapeError(
                f"{type(self).__name__}: categorical must be [B, T, {len(self.categorical_specs)}] = "
                f"{(b, t, len(self.categorical_specs))}, got {tuple(categorical.shape)}"
            )
        dtype = self.norm.weight.dtype
        numeric, present, delta, time = (x.to(dtype) for x in (numeric, present, delta, time))
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=numeric.device)
        steps = torch.arange(t, device=numeric.device)
        snap_mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
        parts: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        if hasattr(self, "summary"):
            per_feature, window = self._window_stats(numeric, present, time, lengths, snap_mask)
            summary = self.summary + self.summary_proj(torch.cat([per_feature.flatten(1), window], dim=1)).unsqueeze(1)
            parts.append(summary)
            if self.by_feature:
                tokens = torch.einsum("bns,nsd->bnd", per_feature, self.feature_weight) + self.feature_bias
                if self.config.value_bins:
                    tokens = tokens + self._bin_embeddings(per_feature)
                parts.append(tokens)
                last = categorical[torch.arange(b, device=categorical.device), (lengths - 1).clamp(min=0)]  # [B, C]
                parts += [emb(last[:, j]).unsqueeze(1) for j, emb in enumerate(self.cat_embeddings)]
            n_fixed = sum(p.shape[1] for p in parts)
            masks.append(torch.ones(b, n_fixed, dtype=torch.bool, device=numeric.device))
        if self.snapshot_tokens or not self.by_feature:
            parts.append(self._snapshot_tokens(numeric, present, delta, time, categorical, lengths, steps))
            masks.append(snap_mask)
        x, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)
        if self.transformer is not None:
            x = self.transformer(x, src_key_padding_mask=~mask)
        x = self.norm(x) * mask.unsqueeze(-1)
        if not (self.by_feature or self.snapshot_tokens):
            # snapshot layout, summary only: the snapshots were context for the summary token, which is kept alone
            x, mask = x[:, :1], mask[:, :1]
        return EncoderOutput(x, mask)

    def _snapshot_tokens(
        self, numeric: torch.Tensor, present: torch.Tensor, delta: torch.Tensor, time: torch.Tensor,
        categorical: torch.Tensor, lengths: torch.Tensor, steps: torch.Tensor,
    ) -> torch.Tensor:
        """One token per snapshot ``[B, T, d]``: projected values, bins, presence, changes, time features, plus the
        categorical embeddings and a recency embedding (0 = latest; padding clamps harmlessly, it is masked)."""
        x = self.input_proj(torch.cat([numeric, self._bins(numeric, present), present, delta * CHANGE_SCALE, time], dim=-1))
        for j, emb in enumerate(self.cat_embeddings):
            x = x + emb(categorical[..., j])
        recency = (lengths.unsqueeze(1) - 1 - steps.unsqueeze(0)).clamp(0, self.config.max_snapshots - 1)
        return x + self.recency(recency)

    def _bin_embeddings(self, per_feature: torch.Tensor) -> torch.Tensor:
        """``[B, N, d]``: embedding of each feature's latest-value bin (row 0 = absent) plus its change bin.

        Values are binned uniformly over the declared range ([0, 1] scaled), changes (x CHANGE_SCALE) over [-1, 1]."""
        nb = self.config.value_bins
        n = per_feature.shape[1]
        latest, change, present = per_feature[..., 0], per_feature[..., -4], per_feature[..., -1]
        offsets = torch.arange(n, device=per_feature.device)
        value_bin = ((latest * nb).floor().clamp(0, nb - 1).long() + 1) * (present > 0).long()
        change_bin = ((change + 1.0) * nb / 2).floor().clamp(0, nb - 1).long()
        return self.value_embedding(value_bin + offsets * (nb + 1)) + self.change_embedding(change_bin + offsets * nb)

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per feature ``[B, N, 5 + K]``: latest value, its K bins, change first->latest (x CHANGE_SCALE), min, max,
        present in the latest snapshot; per window ``[B, 2]``: log time span, length / max_snapshots."""
        b, _, n = numeric.shape
        rows = torch.arange(b, device=numeric.device)
        last = (lengths - 1).clamp(min=0)
        latest, first, present_last = numeric[rows, last], numeric[:, 0], present[rows, last]
        valid = (present > 0) & mask.unsqueeze(-1)
        big = torch.finfo(numeric.dtype).max
        seen = valid.any(1)
        lo = numeric.masked_fill(~valid, big).amin(1).masked_fill(~seen, 0.0)
        hi = numeric.masked_fill(~valid, -big).amax(1).masked_fill(~seen, 0.0)
        change = (latest - first) * present_last * present[:, 0] * CHANGE_SCALE
        bins = self._bins(latest, present_last).view(b, n, -1)
        per_feature = torch.cat([latest.unsqueeze(-1), bins, change.unsqueeze(-1), lo.unsqueeze(-1), hi.unsqueeze(-1),
                                 present_last.unsqueeze(-1)], dim=-1)
        span = time[:, 0, 1:2]  # log age of the first snapshot relative to the latest
        size = (lengths.to(numeric.dtype) / self.config.max_snapshots).unsqueeze(1)
        return per_feature, torch.cat([span, size], dim=1)

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
        directory = Path(directory)
        meta = read_config_json(directory, kind="device encoder")
        encoder = cls(validate_config(DeviceEncoderConfig, meta.get("config", {}), source=str(directory / CONFIG_NAME)))
        if meta.get("revision") not in (None, encoder.revision):
            raise CheckpointError(f"{directory}: saved revision {meta['revision']} does not match the rebuilt {encoder.revision}")
        load_weights_dir(encoder, directory, kind="device encoder")
        return encoder
