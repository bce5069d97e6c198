"""The layout of an xmm checkpoint folder and a typed model of its ``xmm.json`` manifest.

Layout::

    xmm.json                   manifest (:class:`Manifest`): LLM id/revision/embedding fingerprint, modalities with
                               encoder and plugin identity, bridges, added tokens, LoRA, projectors, decoders, config
    bridges/<name>/            one folder per bridge (a shared bridge once): config.json + model.safetensors
    new_tokens.safetensors     rows of added tokens (placeholders and trainable signal tokens)
    lora/                      adapter_config.json + adapter_model.safetensors (only with LoRA)
    projectors/<name>/         output projectors (only when present)
    encoders/<modality>/       trainable encoders only (e.g. device); frozen encoders are never written

A leaf: it imports only pydantic, :mod:`xmm.errors` and the standard library. Reading a manifest turns every
malformed value into a :class:`~xmm.errors.CheckpointError` that names the field and the file, and every path the
manifest holds must stay inside the checkpoint folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from xmm.errors import CheckpointError, IncompatibleCheckpointError

MANIFEST = "xmm.json"
FORMAT = "xmm-checkpoint"
FORMAT_VERSION = 1
NEW_TOKENS = "new_tokens.safetensors"
LORA_DIR = "lora"
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
BRIDGES_DIR = "bridges"
PROJECTORS_DIR = "projectors"
ENCODERS_DIR = "encoders"
ENCODER_WEIGHTS = "model.safetensors"
# top-level entries a save replaces; anything else in the folder (plan.yaml, eval.json, a README) is kept
MANAGED = frozenset({MANIFEST, NEW_TOKENS, LORA_DIR, BRIDGES_DIR, PROJECTORS_DIR, ENCODERS_DIR})


def _relative(value: str) -> str:
    # checked again against the real folder (symlinks) by resolve_inside; this catches what text alone shows
    path = PurePosixPath(value)
    if not value or "\\" in value or "\x00" in value:
        raise ValueError(f"{value!r} is not a relative folder path")
    if path.is_absolute() or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"{value!r} is absolute; paths in a manifest are relative to the checkpoint folder")
    if ".." in path.parts:
        raise ValueError(f"{value!r} leaves the checkpoint folder")
    return value


RelPath = Annotated[str, AfterValidator(_relative)]
# revisions are strings; a plugin that set a number (``revision = 2``) wrote it as a JSON number
Revision = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)]


class _Record(BaseModel):
    # fields a later xmm adds under the same format version are ignored, not refused
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class PluginRecord(_Record):
    """The plugin distribution that provides a modality or an encoder."""

    name: str | None = None
    distribution: str | None = None
    version: str | None = None


class LLMRecord(_Record):
    """The frozen LLM a checkpoint was trained on; ``embedding_fingerprint`` pins its input embeddings."""

    name: str | None = None
    id: str | None = None
    revision: Revision | None = None
    embedding_fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    architecture: str | None = None


class EncoderRecord(_Record):
    """One modality's encoder: registry name and options, identity, and its weights folder when it was trained."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)
    id: str
    revision: Revision
    output_dim: int = Field(gt=0)
    plugin: PluginRecord | None = None
    trainable: bool = False
    path: RelPath | None = None
    num_tokens: int | None = Field(None, gt=0, description="tokens per item when fixed (None: depends on the input)")


class ModalityRecord(_Record):
    """One input modality: its placeholder, encoder, the bridge (folder name) that serves it, and how many LLM
    positions one item takes (``media_tokens``; None when it depends on the input, as with CIF)."""

    placeholder: str
    plugin: PluginRecord | None = None
    encoder: EncoderRecord
    bridge: str
    media_tokens: int | None = Field(None, gt=0)


class BridgeRecord(_Record):
    type: str
    path: RelPath
    modalities: list[str] = Field(min_length=1)


class TokenRecord(_Record):
    text: str = Field(min_length=1)
    id: int = Field(ge=0)
    trainable: bool


class ProjectorRecord(_Record):
    type: str
    path: RelPath


class DecoderRecord(_Record):
    """One output modality: its output config, the decoder's identity and what it produces, its signal tokens and
    its projector (conditioning decoders only)."""

    config: dict[str, Any]
    decoder_id: str | None = None
    decoder_revision: Revision | None = None
    input_kind: Literal["conditioning", "text"] = "conditioning"
    output_kind: Literal["media", "result"] | None = None
    signal_tokens: list[str] = Field(default_factory=list)
    decoder_record: dict[str, Any] | None = None
    projector: RelPath | None = None
    projector_config: dict[str, Any] | None = None


class Manifest(_Record):
    """The typed content of ``xmm.json``. ``lora`` and ``config`` are validated again by the model layer against
    its own config classes (:class:`~xmm.model.config.LoraSettings`, :class:`~xmm.model.config.MultimodalConfig`)."""

    format: Literal["xmm-checkpoint"] = FORMAT
    format_version: int = Field(FORMAT_VERSION, ge=0, le=FORMAT_VERSION)
    xmm_version: str | None = None
    llm: LLMRecord
    modalities: dict[str, ModalityRecord] = Field(default_factory=dict)
    bridges: dict[str, BridgeRecord] = Field(default_factory=dict)
    tokens: list[TokenRecord] = Field(default_factory=list)
    lora: dict[str, Any] | None = None
    projectors: dict[str, ProjectorRecord] = Field(default_factory=dict)
    decoders: dict[str, DecoderRecord] = Field(default_factory=dict)
    config: dict[str, Any]

    def to_json(self) -> str:
        """The manifest as written to ``xmm.json`` (indented, one trailing newline)."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"


def parse_manifest(data: Any, *, source: str | os.PathLike[str] = MANIFEST) -> Manifest:
    """Validate manifest data (the decoded JSON); any bad value -> :class:`CheckpointError` naming field and file.

    A newer ``format_version`` than this xmm reads is an :class:`IncompatibleCheckpointError` (upgrade xmm-core).
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{source}: a manifest is a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not an xmm checkpoint manifest (format {data.get('format')!r})")
    version = data.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise IncompatibleCheckpointError(f"{source}: format version {version} is newer than this xmm supports "
                                          f"({FORMAT_VERSION}); upgrade xmm-core")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r:.80})" if "input" in err and not isinstance(err["input"], dict) else ""
        raise CheckpointError(f"{source}: field '{loc}': {err['msg']}{got}") from e
    for m, entry in manifest.modalities.items():
        bridge = manifest.bridges.get(entry.bridge)
        if bridge is None or m not in bridge.modalities:
            raise CheckpointError(f"{source}: field 'modalities.{m}.bridge': bridge '{entry.bridge}' does not list "
                                  f"modality '{m}' under 'bridges'")
    for name, bridge in manifest.bridges.items():
        stray = [m for m in bridge.modalities if m not in manifest.modalities]
        if stray:
            raise CheckpointError(f"{source}: field 'bridges.{name}.modalities': {stray} are not modalities of the "
                                  "checkpoint")
    return manifest


MANIFEST_BYTES = 16 << 20  # a manifest lists names, ids and small configs: kilobytes
MANIFEST_DEPTH = 32


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``<directory>/xmm.json``. The file must be a regular file inside the checkpoint folder
    (not a FIFO or a device, not a link out of the folder), at most 16 MiB and nested at most 32 levels; every
    problem is a :class:`CheckpointError` naming the file."""
    from xmm.errors import MediaError
    from xmm.limits import check_json_depth, read_file

    path = Path(directory) / MANIFEST
    if not os.path.lexists(path):
        raise CheckpointError(f"{directory}: not an xmm checkpoint (no {MANIFEST})")
    resolve_inside(directory, MANIFEST, field=MANIFEST)
    try:
        raw = read_file(path, max_bytes=MANIFEST_BYTES, what="checkpoint manifest")
        check_json_depth(raw, max_depth=MANIFEST_DEPTH, source=path, what="the manifest")
        data = json.loads(raw)
    except MediaError as e:
        raise CheckpointError(f"{path}: cannot read the manifest: {str(e).split(': ', 1)[-1]}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot read the manifest: {e}") from None
    return parse_manifest(data, source=path)


def resolve_inside(directory: str | os.PathLike[str], relative: str, *, field: str) -> Path:
    """``directory / relative`` after following symlinks, refused with a :class:`CheckpointError` naming ``field``
    when it lands outside ``directory`` (a link out of the folder, or a path that :class:`Manifest` did not check)."""
    root = Path(directory).resolve()
    try:
        target = (root / _relative(relative)).resolve()
    except ValueError as e:
        raise CheckpointError(f"{Path(directory) / MANIFEST}: field '{field}': {e}") from e
    # a Hugging Face cache snapshot holds links into its repo's blobs/ folder: that repo folder is the boundary
    inside = root.parents[1] if root.parent.name == "snapshots" and root.parents[1].name.startswith("models--") else root
    if target != root and inside not in target.parents:
        raise CheckpointError(f"{Path(directory) / MANIFEST}: field '{field}': {relative!r} resolves to {target}, "
                              "outside the checkpoint folder")
    return target
