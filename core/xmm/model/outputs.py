"""The output half of a :class:`~xmm.model.MultimodalLM` (NExT-GPT): signal tokens, output projectors, decoders.

Each output modality gets ``num_signal_tokens`` new trainable tokens (``<img_0>..<img_3>``: only their embedding
and LM-head rows train). When the LLM emits them, its last-layer hidden states at those positions ``[S, d_llm]`` go
through the modality's projector to the decoder's conditioning ``[T, D]`` and the decoder produces the output.
A *text* decoder (e.g. ``device-command``) needs neither: it reads the answer text.

This module holds the config (``MultimodalConfig.outputs``), :func:`attach_outputs` (which fills the model's
``decoders`` / ``projectors`` / ``decoder_specs``), finding signal-token groups in a sequence, decoding them at
generation time, and the checkpoint files of the projectors.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from xmm.errors import CheckpointError, ConfigError, IncompatibleCheckpointError, RegistryError
from xmm.persist import load_weights_dir, read_config_json, validate_config
from xmm.persist.manifest import PROJECTORS_DIR

log = logging.getLogger(__name__)


class OutputConfig(BaseModel):
    """One output modality: which decoder, how to project signal states into its conditioning.

    ``projector`` is a projector config without ``input_dim``/``output_shape``/``num_input_tokens`` (filled from
    the LLM hidden size, the decoder's ``condition_shape`` and ``num_signal_tokens``); default ``transformer``.
    ``signal_tokens``: explicit token texts; default ``<p_0>..<p_{n-1}>`` with ``p`` the decoder's
    ``signal_prefix`` (``<img_0>`` for an image decoder), else the output's name.
    """

    model_config = ConfigDict(extra="forbid")

    decoder: str = Field(description="registry name of the decoder, e.g. 'diffusers' or 'device-command'")
    decoder_config: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the decoder")
    projector: dict[str, Any] | None = Field(None, description="projector config (type + options) without dims")
    num_signal_tokens: int = Field(4, ge=0, description="signal tokens per output (0 for text decoders)")
    signal_tokens: list[str] | None = Field(None, description="explicit signal-token texts")

    @field_validator("projector")
    @classmethod
    def _no_dims(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            for key in ("input_dim", "output_shape", "num_input_tokens"):
                if key in v:
                    raise ValueError(f"'{key}' is filled in by the model; leave it out of the projector config")
        return v

    def tokens_for(self, modality: str, prefix: str | None = None) -> list[str]:
        """The signal-token texts of output ``modality``; ``prefix``: the decoder's ``signal_prefix``."""
        if self.signal_tokens is not None:
            if len(self.signal_tokens) != self.num_signal_tokens and "num_signal_tokens" in self.model_fields_set:
                raise ConfigError(
                    f"{len(self.signal_tokens)} signal_tokens given but num_signal_tokens is {self.num_signal_tokens}",
                    field=f"outputs.{modality}.signal_tokens",
                )
            return list(self.signal_tokens)
        return [f"<{prefix or modality}_{k}>" for k in range(self.num_signal_tokens)]


@dataclass
class SignalGroup:
    """One occurrence of a modality's signal tokens: row ``batch_index``, first position ``start``; ``present[k]``
    says whether token k sits at ``start + k``."""

    batch_index: int
    start: int
    present: list[bool]


def find_signal_groups(token_ids: torch.Tensor, signal_ids: list[int], attention_mask: torch.Tensor | None = None) -> list[SignalGroup]:
    """Every group of signal tokens in ``token_ids [B, L]``, in row-major order, never overlapping.

    A signal token ``k`` at position ``p`` belongs to the group starting at ``p - k``; a token whose group would
    overlap the previous group of its row (e.g. a repeated last token) is a stray and is ignored. ``present`` tells
    which tokens of a group are really there.
    """
    if not signal_ids:
        return []
    ids = torch.tensor(signal_ids, dtype=token_ids.dtype, device=token_ids.device)
    hit = torch.isin(token_ids, ids)
    if attention_mask is not None:
        hit &= attention_mask.bool()
    groups: list[SignalGroup] = []
    s = len(signal_ids)
    rows = token_ids.tolist()
    end = {}  # row -> first position after its last group
    for b, p in hit.nonzero().tolist():
        start = max(p - signal_ids.index(rows[b][p]), 0)
        if start < end.get(b, 0):
            continue  # inside the previous group, or a stray overlapping it
        present = [start + j < len(rows[b]) and rows[b][start + j] == signal_ids[j] for j in range(s)]
        if attention_mask is not None:
            present = [ok and bool(attention_mask[b, start + j]) for j, ok in enumerate(present)]
        groups.append(SignalGroup(b, start, present))
        end[b] = start + s
    return groups


def gather_signal_states(hidden: torch.Tensor, groups: list[SignalGroup], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of each group: ``hidden [B, L, d]`` -> states ``[G, S, d]`` and mask ``[G, S]`` (False where a
    signal token is missing; its state is then taken at the clamped position and must be ignored)."""
    if not groups:
        return hidden.new_zeros(0, num_tokens, hidden.shape[-1]), torch.zeros(0, num_tokens, dtype=torch.bool, device=hidden.device)
    length = hidden.shape[1]
    b = torch.tensor([g.batch_index for g in groups], device=hidden.device)
    pos = torch.tensor([[min(g.start + k, length - 1) for k in range(num_tokens)] for g in groups], device=hidden.device)
    states = hidden[b.unsqueeze(1), pos]
    mask = torch.tensor([g.present for g in groups], dtype=torch.bool, device=hidden.device)
    return states, mask


def attach_outputs(model: Any, outputs: dict[str, OutputConfig | dict[str, Any]], *,
                   decoders: dict[str, Any] | None = None, registry: Any = None) -> None:
    """Give ``model`` (a :class:`~xmm.model.MultimodalLM`) its output modalities, in place.

    For each: the decoder (from the registry, unless an instance is passed in ``decoders``), its signal tokens
    (``model.add_tokens(tokens, trainable=True)``) and, for conditioning decoders, a projector from the LLM hidden
    size to the decoder's ``condition_shape``. They land in ``model.decoders[m]``, ``model.projectors[m]`` and
    ``model.decoder_specs[m]`` (signal tokens and ids, decoder name and config).
    """
    if registry is None:
        from xmm.registry import get_registry

        registry = get_registry()
    decoders = dict(decoders or {})
    for modality, config in outputs.items():
        if isinstance(config, dict):
            config = validate_config(OutputConfig, config, source=f"outputs.{modality}")
        if modality in model.decoders:
            raise ConfigError(f"output '{modality}' is already attached", field=f"outputs.{modality}")
        decoder = decoders.pop(modality, None)
        _check_json(config.decoder_config, f"outputs.{modality}.decoder_config", modality)
        if decoder is None:
            try:
                decoder = registry.create_decoder(config.decoder, **copy.deepcopy(config.decoder_config))
            except RegistryError as e:
                raise ConfigError(str(e), field=f"outputs.{modality}.decoder") from e
            except ConfigError as e:
                raise ConfigError(
                    f"cannot build decoder '{config.decoder}': {e}. Set it in outputs.{modality}.decoder_config (e.g. "
                    f"pipeline: a local pipeline folder) or pass a ready one: decoders={{'{modality}': ...}}",
                    field=f"outputs.{modality}.decoder_config",
                ) from e
        elif not config.decoder_config and getattr(decoder, "rebuild_config", None) is not None:
            # a ready decoder that knows how it was made (e.g. a pipeline folder): record that in the model config,
            # so a checkpoint can rebuild it without being handed the object again
            rebuilt = decoder.rebuild_config()
            if rebuilt:
                config = config.model_copy(update={"decoder_config": rebuilt})
                if modality in getattr(model.config, "outputs", {}):
                    outs = {**model.config.outputs, modality: config}
                    model.config = model.config.model_copy(update={"outputs": outs})
        if not isinstance(decoder, nn.Module):
            raise ConfigError(f"decoder for '{modality}' is a {type(decoder).__name__}, not an xmm Decoder", field=f"outputs.{modality}.decoder")
        kind = getattr(decoder, "input_kind", "conditioning")
        explicit = "num_signal_tokens" in config.model_fields_set or config.signal_tokens is not None
        # a text decoder reads the answer, so it gets signal tokens only when asked for them explicitly
        tokens = config.tokens_for(modality, getattr(decoder, "signal_prefix", None)) if kind == "conditioning" or explicit else []
        if kind == "conditioning":
            projector = _build_projector(modality, config, decoder, model.hidden_size, len(tokens), registry)
            model.projectors[modality] = projector.to(model.device)
        decoder.requires_grad_(False)
        decoder.eval()
        if model.device.type != "cpu" and getattr(getattr(decoder, "config", None), "device", None) is None:
            decoder.to(model.device)  # decoders are built on the CPU; follow the model unless told where to run
        model.decoders[modality] = decoder
        ids = model.add_tokens(tokens, trainable=True) if tokens else []
        model.decoder_specs[modality] = {
            "decoder": config.decoder,
            "decoder_config": config.decoder_config,
            "output_config": config,
            "input_kind": kind,
            "output_kind": getattr(decoder, "output_kind", "media"),
            "signal_tokens": list(tokens),
            "signal_ids": [int(i) for i in ids],
        }
    if decoders:
        raise ConfigError(f"decoders given for outputs that are not configured: {sorted(decoders)}", field="outputs")


def _check_json(data: dict[str, Any], where: str, modality: str) -> None:
    # the config is written into checkpoints as JSON; objects (a pipeline in memory) belong in decoders=
    for key, value in data.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"{type(value).__name__} is not a plain value (the config is saved as JSON); pass ready objects as "
                f"decoders={{'{modality}': DiffusersDecoder(pipeline)}} instead",
                field=f"{where}.{key}",
            ) from e


def _build_projector(modality: str, config: OutputConfig, decoder: Any, hidden_size: int, num_tokens: int,
                     registry: Any) -> nn.Module:
    if not num_tokens:
        raise ConfigError("a conditioning decoder needs at least one signal token", field=f"outputs.{modality}.num_signal_tokens")
    shape = getattr(decoder, "condition_shape", None)
    if shape is None:
        raise ConfigError(f"decoder '{config.decoder}' does not say its condition_shape", field=f"outputs.{modality}.decoder")
    data = dict(config.projector or {"type": "transformer"})
    data.update(input_dim=int(hidden_size), output_shape=[int(shape[0]), int(shape[1])], num_input_tokens=num_tokens)
    try:
        return registry.create_projector(data)
    except (ConfigError, RegistryError) as e:
        raise ConfigError(str(e), field=f"outputs.{modality}.projector") from e


def signal_ids(model: Any, modality: str) -> list[int]:
    spec = model.decoder_specs.get(modality) or {}
    return list(spec.get("signal_ids", []))


def project_signals(model: Any, modality: str, hidden: torch.Tensor, token_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None, *, complete_only: bool = False) -> tuple[torch.Tensor, list[SignalGroup]]:
    """Conditioning ``[G, T, D]`` for every group of ``modality``'s signal tokens in ``token_ids [B, L]``, from the
    LLM's last-layer states ``hidden [B, L, d]`` (differentiable: the alignment loss trains through it).
    ``complete_only``: skip groups that miss a signal token (generation decodes only complete groups)."""
    projector = model.projectors[modality]
    ids = signal_ids(model, modality)
    groups = find_signal_groups(token_ids, ids, attention_mask)
    if complete_only:
        groups = [g for g in groups if all(g.present)]
    if not groups:
        t, d = projector.output_shape
        return hidden.new_zeros(0, t, d), groups
    states, mask = gather_signal_states(hidden, groups, len(ids))
    dtype = next(projector.parameters()).dtype
    return projector(states.to(dtype), mask), groups


@dataclass
class ProducedOutput:
    """One thing a decoder produced for an answer: ``value`` (a PIL image, a waveform, video frames, a device
    command result...), the ``decoder`` that made it and its ``info``. ``kind`` is the decoder's ``output_kind``:
    ``media`` outputs are written to files by :meth:`save`, ``result`` outputs are reported by :meth:`describe`."""

    modality: str
    value: Any
    decoder: Any = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(getattr(self.decoder, "output_kind", "media"))

    def save(self, path_stem: str | Path) -> Path:
        """Write the output to ``path_stem`` + the decoder's suffix (``.png``, ``.wav``...); returns the path."""
        return self.decoder.save_output(self.value, path_stem)

    def describe(self) -> dict[str, Any]:
        """A JSON-able description of the output, from its decoder (``Decoder.describe_output``)."""
        describe = getattr(self.decoder, "describe_output", None)
        if describe is None:
            return {"modality": self.modality, "kind": self.kind, "type": type(self.value).__name__}
        return describe(self.value)


@torch.no_grad()
def decode_generated(model: Any, spliced: Any, answer_ids: list[list[int]], texts: list[str]) -> list[dict[str, list[ProducedOutput]]]:
    """Run the decoders on generated answers: per answer, modality -> what was produced.

    Text decoders read ``texts``. When an answer holds signal tokens of a conditioning decoder, the LLM runs once
    more over prompt (``spliced``, the generation's own spliced inputs) + answer to get the last-layer states at the
    signal positions (states of the generated tokens themselves, as in training); only complete groups of signal
    tokens in the answer count, not ones in earlier turns of the prompt.
    """
    rows: list[dict[str, list[ProducedOutput]]] = [{} for _ in texts]
    for modality, decoder in model.decoders.items():
        if getattr(decoder, "input_kind", "conditioning") != "text":
            continue
        out = decoder(text=list(texts))
        for b, item in enumerate(out.outputs):
            if item is not None and _produced(decoder, item):
                rows[b].setdefault(modality, []).append(ProducedOutput(out.modality, item, decoder, dict(out.info)))
    wanted = [m for m, d in model.decoders.items() if getattr(d, "input_kind", "conditioning") == "conditioning"
              and any(set(signal_ids(model, m)) & set(ids) for ids in answer_ids)]
    if not wanted:
        return rows
    hidden, token_ids, mask = _answer_states(model, spliced, answer_ids)
    for modality in wanted:
        cond, groups = project_signals(model, modality, hidden, token_ids, mask, complete_only=True)
        if not groups:
            continue
        decoder = model.decoders[modality]
        out = decoder(cond)
        for g, item in zip(groups, out.outputs):
            rows[g.batch_index].setdefault(modality, []).append(ProducedOutput(out.modality, item, decoder, dict(out.info)))
    return rows


def _answer_states(model: Any, spliced: Any, answer_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last-layer states ``[B, P + G, d]`` over prompt + answers, token ids with the prompt part set to -1, and the
    attention mask (answers right-padded after the left-padded prompt)."""
    b, p = spliced.attention_mask.shape
    g = max(1, max(len(ids) for ids in answer_ids))
    device = spliced.inputs_embeds.device
    pad = int(model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0)
    gen = torch.full((b, g), pad, dtype=torch.long, device=device)
    gen_mask = torch.zeros((b, g), dtype=spliced.attention_mask.dtype, device=device)
    for i, ids in enumerate(answer_ids):
        gen[i, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
        gen_mask[i, : len(ids)] = 1
    with model.autocast():
        gen_embeds = model.llm.get_input_embeddings()(gen).to(spliced.inputs_embeds.dtype)
        embeds = torch.cat([spliced.inputs_embeds, gen_embeds], dim=1)
        mask = torch.cat([spliced.attention_mask, gen_mask], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = model.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                        use_cache=False, logits_to_keep=1)
    token_ids = torch.cat([torch.full((b, p), -1, dtype=torch.long, device=device), gen], dim=1)
    return out.hidden_states[-1].float(), token_ids, mask.bool()


def _produced(decoder: Any, item: Any) -> bool:
    # a text decoder reads every answer; the decoder says whether what it made of one is an output
    produced = getattr(decoder, "produced", None)
    return bool(produced(item)) if produced is not None else item is not None


# -- checkpoint files -----------------------------------------------------------------------------------------
def outputs_manifest(model: Any) -> dict[str, Any]:
    """JSON-able record of the outputs for ``xmm.json``: per modality the decoder (name, config, id, revision),
    signal tokens and projector config/folder."""
    record: dict[str, Any] = {}
    for modality, spec in model.decoder_specs.items():
        decoder = model.decoders[modality]
        config = spec["output_config"]
        entry = {
            "config": config.model_dump(mode="json"),
            "decoder_id": getattr(decoder, "id", None),
            "decoder_revision": getattr(decoder, "revision", None),
            "input_kind": spec["input_kind"],
            "output_kind": spec.get("output_kind", "media"),
            "signal_tokens": spec["signal_tokens"],
        }
        if hasattr(decoder, "describe"):
            entry["decoder_record"] = decoder.describe()
        if modality in model.projectors:
            entry["projector"] = f"{PROJECTORS_DIR}/{modality}"
            entry["projector_config"] = model.projectors[modality].config.model_dump(mode="json")
        record[modality] = entry
    return record


def load_projectors(model: Any, directory: str | Path, folders: dict[str, Path] | None = None) -> None:
    """Load saved weights into the model's (already built) projectors, strictly; the config must match.

    ``folders``: the projector folder of each output (checked by the caller to lie inside the checkpoint); default
    ``<directory>/projectors/<modality>``."""
    for modality, projector in model.projectors.items():
        folder = (folders or {}).get(modality) or Path(directory) / PROJECTORS_DIR / modality
        if not folder.is_dir():
            raise CheckpointError(f"{directory}: the checkpoint has no projector for output '{modality}' ({folder} is missing)")
        saved = read_config_json(folder, kind="projector")
        own = projector.config.model_dump(mode="json")
        if saved != own:
            diff = sorted(k for k in set(saved) | set(own) if saved.get(k) != own.get(k))
            raise IncompatibleCheckpointError(
                f"{folder}: the saved projector has {', '.join(f'{k}={saved.get(k)!r}' for k in diff)} but the model "
                f"built {', '.join(f'{k}={own.get(k)!r}' for k in diff)}; was the decoder changed?"
            )
        load_weights_dir(projector, folder, kind="projector")


def media_stem(output_dir: str | Path, modality: str, prefix: str = "xmm") -> Path:
    """A fresh file stem ``<dir>/<prefix>-<modality>-<n>`` (smallest n that no existing file uses, any suffix)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    while any(out.glob(f"{prefix}-{modality}-{n}.*")):
        n += 1
    return out / f"{prefix}-{modality}-{n}"


def save_produced(outputs: dict[str, list[ProducedOutput]], output_dir: str | Path) -> list[tuple[ProducedOutput, Path | None]]:
    """Save every produced output under ``output_dir`` (``xmm-image-0.png``, ``xmm-audio-0.wav``...), never
    overwriting a file. Returns ``(output, path)`` pairs; ``path`` is None for ``result`` outputs (e.g. device
    commands; report them with ``output.describe()``) and for decoders that cannot write files."""
    saved: list[tuple[ProducedOutput, Path | None]] = []
    for modality, items in outputs.items():
        for item in items:
            path = None
            if item.kind == "media":
                try:
                    path = item.save(media_stem(output_dir, modality))
                except NotImplementedError:
                    path = None
            saved.append((item, path))
    return saved
