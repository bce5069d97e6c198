"""Any transformers audio encoder by Hub id or local path: AST, the CLAP audio tower, wav2vec2, HuBERT, Whisper, ...

The model's own feature extractor turns each clip into inputs (``ASTFeatureExtractor``'s Kaldi fbank - torchaudio's
when it imports, numpy otherwise -, ``WhisperFeatureExtractor``'s log-mel, the raw waveform for wav2vec2/HuBERT).
Encoder-decoder checkpoints (Whisper) keep only their encoder; CLAP keeps its audio tower. Tokens that only cover
padding are masked where the model says how many frames real audio gives (wav2vec2-style output lengths; Whisper's
50 frames per second); fixed-size spectrogram models (AST, CLAP) keep all their tokens.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from xmm.errors import ConfigError, ModelNotFoundError
from xmm.io import sha256_file
from xmm.persist import validate_config

from xmm_plugin_audio.clip_encoder import ClipAudioEncoder


class HFAudioEncoderConfig(BaseModel):
    """Settings of the ``hf-audio`` encoder."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="transformers model id or local folder")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit)")
    layer: int | None = Field(None, description="hidden-state index to use; None = the last hidden state")
    clip_seconds: float | None = Field(10.0, gt=0, description="clip length; None = one clip")
    max_seconds: float = Field(600.0, gt=0)
    local_files_only: bool = Field(False, description="never contact the Hub")
    window_seconds: int | None = Field(
        None, ge=1, le=30, description="Whisper only: encode windows of this length instead of 30 s (faster, approximate)"
    )


class HFAudioEncoder(ClipAudioEncoder):
    """A frozen transformers audio encoder: clips -> its hidden states ``[B, T, D]``."""

    config_class: type[HFAudioEncoderConfig] = HFAudioEncoderConfig

    def __init__(self, **config: Any) -> None:
        cfg = validate_config(self.config_class, config, source=f"{type(self).__name__} config")
        super().__init__(clip_seconds=cfg.clip_seconds, max_seconds=cfg.max_seconds)
        self.config = cfg
        self.feature_extractor, self.model = load_audio_backbone(cfg.model, revision=cfg.revision, local_files_only=cfg.local_files_only)
        if cfg.window_seconds is not None:
            self.feature_extractor = shorten_whisper_window(self.feature_extractor, self.model, cfg.window_seconds)
            if self.clip_seconds is None or self.clip_seconds > cfg.window_seconds:
                self.max_seconds = min(self.max_seconds, float(cfg.window_seconds))
        self.sample_rate = int(self.feature_extractor.sampling_rate)
        self.output_dim = _hidden_size(self.model)
        self.id = cfg.model
        self._revision: str | None = cfg.revision
        self._accepts = set(inspect.signature(self.model.forward).parameters)
        self.freeze()

    @property
    def revision(self) -> str:  # type: ignore[override]
        """Hub commit, or the sha256 of a local folder's weights (hashed on first use only)."""
        if self._revision is None:
            self._revision = _revision(self.config.model, self.model)
        return self._revision

    @revision.setter
    def revision(self, value: str) -> None:
        self._revision = value

    def extract(self, clips: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the feature extractor on ``clips`` (each ``[S_i]``) -> the model's batched inputs."""
        arrays = [c.detach().float().cpu().numpy() for c in clips]
        kwargs: dict[str, Any] = {"sampling_rate": self.sample_rate, "return_tensors": "pt"}
        if "return_attention_mask" in inspect.signature(self.feature_extractor.__call__).parameters:
            kwargs["return_attention_mask"] = True
        if len(arrays) > 1 and not _fixed_length(self.feature_extractor):
            kwargs["padding"] = True
        # feature extractors compute in float32 and may hand torch results to numpy: keep any caller's bf16
        # autocast (MultimodalLM runs encoders under it) away from them
        with torch.autocast("cpu", enabled=False):
            inputs = self.feature_extractor(arrays, **kwargs)
        return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    def encode_clips(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.extract(clips)
        lengths = torch.tensor([len(c) for c in clips])
        dtype = next(self.model.parameters()).dtype
        call = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items() if k in self._accepts}
        if "attention_mask" in call and not _uses_attention_mask(self.model):
            del call["attention_mask"]  # e.g. Whisper's encoder ignores it and warns
        out = self.model(**call, output_hidden_states=self.config.layer is not None)
        hidden = out.hidden_states[self.config.layer] if self.config.layer is not None else out.last_hidden_state
        if hidden.dim() == 4:  # spectrogram towers (CLAP/HTSAT): [N, D, F, T'] -> tokens [N, F*T', D]
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden.float(), self.real_tokens(lengths, hidden.shape[1]).to(hidden.device)

    def real_tokens(self, lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Mask ``[N, T]`` of the tokens that cover real audio of ``lengths [N]`` samples."""
        if _is_whisper(self.feature_extractor):
            # log-mel frames every hop_length samples, halved by the encoder's strided conv
            per_token = self.feature_extractor.hop_length * 2
            n = torch.tensor([min(num_tokens, max(1, math.ceil(int(x) / per_token))) for x in lengths])
        elif hasattr(self.model, "_get_feat_extract_output_lengths"):  # wav2vec2, HuBERT, WavLM, data2vec-audio
            n = self.model._get_feat_extract_output_lengths(lengths).clamp(1, num_tokens)
        else:
            n = torch.full((len(lengths),), num_tokens)
        return torch.arange(num_tokens)[None, :] < n[:, None]

    def tokens_per_second(self) -> float | None:
        if _is_whisper(self.feature_extractor):
            return self.sample_rate / (self.feature_extractor.hop_length * 2)
        return None

    def preprocess_config(self) -> dict[str, Any]:
        return {**super().preprocess_config(), "layer": self.config.layer, "window_seconds": self.config.window_seconds}


def shorten_whisper_window(fe: Any, encoder: nn.Module, seconds: int) -> Any:
    """Make a Whisper encoder take ``seconds``-long windows instead of 30 s: its position table is cut to the first
    ``seconds * 50`` rows and the feature extractor pads to ``seconds``. Whisper was trained on 30 s windows, so the
    features differ somewhat from the 30 s ones (whisper.cpp's ``audio_ctx`` does the same); attention over fewer
    frames makes the encoder several times faster on short utterances. Returns the new feature extractor."""
    from transformers import WhisperFeatureExtractor

    if not _is_whisper(fe) or not hasattr(encoder, "embed_positions"):
        raise ConfigError("window_seconds applies to Whisper encoders only", field="window_seconds")
    positions = seconds * fe.sampling_rate // (fe.hop_length * 2)
    if positions > encoder.embed_positions.num_embeddings:
        raise ConfigError(f"window_seconds={seconds} exceeds the model's {encoder.embed_positions.num_embeddings} positions", field="window_seconds")
    table = nn.Embedding(positions, encoder.embed_positions.embedding_dim)
    table.weight.data.copy_(encoder.embed_positions.weight.data[:positions])
    table.requires_grad_(False)
    encoder.embed_positions = table
    encoder.config.max_source_positions = positions
    encoder.max_source_positions = positions
    return WhisperFeatureExtractor(
        feature_size=fe.feature_size, sampling_rate=fe.sampling_rate, hop_length=fe.hop_length, chunk_length=seconds, n_fft=fe.n_fft
    )


def load_audio_backbone(name: str, *, revision: str | None = None, local_files_only: bool = False) -> tuple[Any, nn.Module]:
    """Load ``(feature_extractor, encoder module)`` for a transformers audio model id or folder."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    kw: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
    try:
        config = AutoConfig.from_pretrained(name, **kw)
        fe = AutoFeatureExtractor.from_pretrained(name, **kw)
        model = AutoModel.from_pretrained(name, dtype=torch.float32, **kw)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"cannot load the audio encoder '{name}': {e}. Without network access pass a local folder (config, weights "
            "and preprocessor_config.json) or a model already in the Hugging Face cache."
        ) from e
    if getattr(model, "audio_model", None) is not None:  # CLAP: keep the audio tower only
        model = model.audio_model
    elif getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()  # Whisper & co: the decoder is not needed
    model.requires_grad_(False)
    model.eval()
    return fe, model


def _hidden_size(model: nn.Module) -> int:
    cfg = model.config
    if getattr(cfg, "model_type", "") == "clap_audio_model":
        # HTSAT doubles the patch-embedding width at every stage after the first
        return int(cfg.patch_embeds_hidden_size * 2 ** (len(cfg.depths) - 1))
    for attr in ("hidden_size", "d_model"):
        if isinstance(getattr(cfg, attr, None), int):
            return int(getattr(cfg, attr))
    raise ModelNotFoundError(f"cannot tell the hidden size of {type(model).__name__} from its config")


def _revision(name: str, model: nn.Module) -> str:
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        return commit
    path = Path(name)
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if weights:
        return "sha256:" + sha256_file(weights[0]) if len(weights) == 1 else "sha256:" + ",".join(sha256_file(w)[:16] for w in weights)
    return "unknown"


def _is_whisper(fe: Any) -> bool:
    return type(fe).__name__ == "WhisperFeatureExtractor"


def _fixed_length(fe: Any) -> bool:
    # these extractors pad/truncate every input to a fixed size themselves
    return type(fe).__name__ in {"WhisperFeatureExtractor", "ASTFeatureExtractor", "ClapFeatureExtractor"}


def _uses_attention_mask(model: nn.Module) -> bool:
    # wav2vec2 checkpoints with group-norm feature extractors were trained without a mask
    cfg = model.config
    if getattr(cfg, "model_type", "") == "whisper":
        return False
    return getattr(cfg, "feat_extract_norm", "layer") == "layer"
