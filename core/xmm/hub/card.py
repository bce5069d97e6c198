"""Model cards (``README.md``) for pushed checkpoints and bridges, with ``library_name: xmm`` YAML metadata.

Everything in a card is read from the folder being uploaded: the ``xmm.json`` manifest (LLM and encoders with their
revisions, modalities, bridges with the number of tokens each emits, tokens, LoRA), the tensor sizes (safetensors
headers), and ``plan.yaml`` / ``eval.json`` when the trainer left them there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xmm.pretrained import is_repo_id

LIBRARY = "xmm"


def count_parameters(path: str | os.PathLike[str]) -> int:
    """Tensor elements in a ``.safetensors`` file, or in all of them under a folder (read from the headers only)."""
    from safetensors import safe_open

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors")) if path.is_dir() else []
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= int(d)
                total += n
    return total


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _tokens_per_item(modality: dict[str, Any]) -> str:
    """Q as the manifest records it (``media_tokens``: an int, or null when it depends on the input); manifests
    written before it was recorded give '-'."""
    if "media_tokens" not in modality:
        return "-"
    value = modality["media_tokens"]
    return str(value) if isinstance(value, int) else "input-dependent"


def _plugin_text(plugin: dict[str, Any] | None) -> str:
    if not plugin or not plugin.get("distribution"):
        return "-"
    version = plugin.get("version")
    return f"{plugin['distribution']} {version}" if version and version != "?" else str(plugin["distribution"])


def _requirement(plugin: dict[str, Any] | None) -> str | None:
    """``dist==version`` for ``pip install`` (None without a distribution)."""
    if not plugin or plugin.get("distribution") in (None, "", "?", "xmm-core"):
        return None
    version = plugin.get("version")
    return f"{plugin['distribution']}=={version}" if version and version != "?" else str(plugin["distribution"])


def _stage_rows(plan: Any) -> list[list[Any]]:
    stages = plan.get("stages") if isinstance(plan, dict) else None
    if not isinstance(stages, list):
        return []
    rows = []
    for i, stage in enumerate(stages, 1):
        if not isinstance(stage, dict):
            continue
        trainable = stage.get("trainable")
        objectives = stage.get("objectives")
        if isinstance(objectives, dict):
            objectives = list(objectives)
        elif isinstance(objectives, list):
            objectives = [o.get("name", o) if isinstance(o, dict) else o for o in objectives]
        steps = stage.get("max_steps") or stage.get("steps")
        if steps is None and stage.get("epochs"):
            steps = f"{stage['epochs']} epochs"
        rows.append([
            stage.get("name", i),
            ", ".join(map(str, trainable)) if isinstance(trainable, list) else trainable,
            ", ".join(map(str, objectives)) if isinstance(objectives, list) else objectives,
            steps,
        ])
    return rows


def _eval_rows(data: Any) -> list[list[Any]]:
    """``{"metric", "score", "n"}``, a list of those, or a mapping of name -> those."""
    if isinstance(data, dict) and "score" in data:
        items: list[tuple[Any, Any]] = [(data.get("name") or data.get("manifest") or "eval", data)]
    elif isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(d.get("name", i) if isinstance(d, dict) else i, d) for i, d in enumerate(data, 1)]
    else:
        return []
    rows = []
    for name, entry in items:
        if isinstance(entry, dict) and "score" in entry:
            score = entry["score"]
            rows.append([name, entry.get("metric"), f"{score:.4g}" if isinstance(score, float) else score, entry.get("n")])
        elif isinstance(entry, (int, float)):
            rows.append([name, None, f"{entry:.4g}" if isinstance(entry, float) else entry, None])
    return rows


def checkpoint_card(folder: str | os.PathLike[str], manifest: dict[str, Any], *, repo_id: str | None = None) -> str:
    """The ``README.md`` text (YAML front matter + sections) for the checkpoint staged in ``folder``."""
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    modalities: dict[str, Any] = manifest.get("modalities", {})
    bridge_types = sorted({str(b["type"]) for b in manifest.get("bridges", {}).values() if b.get("type")})
    tags = [LIBRARY, "multimodal", *sorted(modalities), *(f"bridge-{t}" for t in bridge_types)]
    if manifest.get("lora"):
        tags.append("lora")
    llm_id = manifest.get("llm", {}).get("id")
    # base_model must name a Hub repo; a local LLM folder is described in the body only
    base_model = llm_id if isinstance(llm_id, str) and is_repo_id(llm_id) and not Path(llm_id).exists() else None
    data = ModelCardData(library_name=LIBRARY, base_model=base_model, tags=tags)
    names = ", ".join(sorted(modalities)) or "no"
    body = [
        f"# {repo_id or folder.name}",
        "",
        f"Trained parts of an xmm multimodal model: {names} input{'s' if len(modalities) != 1 else ''} bridged into a "
        "frozen LLM. This repo holds only what was trained (bridges, LoRA adapter, new token rows, projectors); the "
        "frozen LLM and encoders are loaded from their own sources and checked against the revisions pinned below.",
        "",
        *_llm_section(manifest),
        *_modality_sections(manifest),
        *_trained_section(folder, manifest),
        *_outputs_section(manifest),
        *_plan_section(folder),
        *_eval_section(folder),
        *_load_section(manifest, repo_id),
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _llm_section(manifest: dict[str, Any]) -> list[str]:
    llm = manifest.get("llm", {})
    row = [llm.get("id"), llm.get("revision"), llm.get("embedding_fingerprint"), llm.get("hidden_size")]
    return ["## Base LLM", "", _table(["id", "revision", "embedding fingerprint", "hidden size"], [row]), ""]


def _modality_sections(manifest: dict[str, Any]) -> list[str]:
    bridges: dict[str, Any] = manifest.get("bridges", {})
    rows, enc_rows = [], []
    for name, m in sorted(manifest.get("modalities", {}).items()):
        enc = m.get("encoder") or {}
        bname = m.get("bridge")
        bentry = bridges.get(bname, {}) if isinstance(bname, str) else {}
        btype = bentry.get("type", "-")
        shared = f" (shared '{bname}')" if len(bentry.get("modalities", [])) > 1 else ""
        q = _tokens_per_item(m)
        rows.append([name, f"`{m.get('placeholder')}`", enc.get("name") or enc.get("id"), f"{btype}{shared}", q])
        weights = "trained (in this repo)" if enc.get("trainable") else "frozen"
        enc_rows.append([name, enc.get("id"), enc.get("revision"), weights, _plugin_text(enc.get("plugin") or m.get("plugin"))])
    return ["## Modalities", "", _table(["modality", "placeholder", "encoder", "bridge", "tokens per item (Q)"], rows), "",
            "## Encoders", "", _table(["modality", "encoder id", "revision", "weights", "plugin"], enc_rows), ""]


def _trained_section(folder: Path, manifest: dict[str, Any]) -> list[str]:
    rows = []
    for name, b in sorted(manifest.get("bridges", {}).items()):
        path = b.get("path", f"bridges/{name}")
        rows.append([path, b.get("type"), ", ".join(b.get("modalities", [])), count_parameters(folder / path)])
    lora = manifest.get("lora")
    if lora:
        kind = f"LoRA r={lora.get('r')} alpha={lora.get('alpha')}"
        rows.append(["lora", kind, ", ".join(lora.get("target_modules", [])), count_parameters(folder / "lora")])
    tokens = manifest.get("tokens", [])
    if tokens:
        texts = ", ".join(f"`{t['text']}`" + (" (trained)" if t.get("trainable") else "") for t in tokens)
        rows.append(["new_tokens.safetensors", "new token rows", texts, count_parameters(folder / "new_tokens.safetensors")])
    for name, p in sorted(manifest.get("projectors", {}).items()):
        path = p.get("path", f"projectors/{name}")
        rows.append([path, p.get("type"), name, count_parameters(folder / path)])
    return ["## Trained parts", "", _table(["path", "kind", "used by", "parameters"], rows), ""]


def _outputs_section(manifest: dict[str, Any]) -> list[str]:
    decoders = manifest.get("decoders") or {}
    if not decoders:
        return []
    rows = [[n, d.get("decoder_id") or d.get("name"), d.get("decoder_revision"), ", ".join(d.get("signal_tokens", []))]
            for n, d in sorted(decoders.items())]
    return ["## Outputs", "", _table(["modality", "decoder", "revision", "signal tokens"], rows), ""]


def _load_section(manifest: dict[str, Any], repo_id: str | None) -> list[str]:
    modalities: dict[str, Any] = manifest.get("modalities", {})
    plugins = {_requirement(p) for m in modalities.values() for p in (m.get("plugin"), (m.get("encoder") or {}).get("plugin"))}
    first = min(modalities, default=None)
    media = f'{{"type": "{first}", "path": "example"}}, ' if first else ""
    return [
        "## How to load",
        "",
        "```bash",
        " ".join(["pip install xmm-core", *sorted(p for p in plugins if p)]),
        "```",
        "",
        "```python",
        "from xmm import MultimodalLM",
        "",
        f'model = MultimodalLM.from_pretrained("{repo_id or "path/to/checkpoint"}")',
        f'print(model.chat([{{"role": "user", "content": [{media}{{"type": "text", "text": "Describe it."}}]}}]))',
        "```",
        "",
        "Once downloaded, the repo loads offline from the Hugging Face cache (`HF_HUB_OFFLINE=1`). Loading refuses an "
        "LLM whose embedding fingerprint, or an encoder whose id/revision, differs from the ones above.",
        "",
    ]


def _plan_section(folder: Path) -> list[str]:
    path = folder / "plan.yaml"
    if not path.is_file():
        return []
    import yaml

    text = path.read_text()
    try:
        plan = yaml.safe_load(text)
    except yaml.YAMLError:
        plan = None
    out = ["## Training stages", ""]
    rows = _stage_rows(plan)
    if rows:
        out += [_table(["stage", "trainable", "objectives", "steps"], rows), ""]
    out += ["<details><summary>plan.yaml</summary>", "", "```yaml", text.rstrip(), "```", "", "</details>", ""]
    return out


def _eval_section(folder: Path) -> list[str]:
    path = folder / "eval.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    rows = _eval_rows(data)
    if not rows:
        return ["## Evaluation", "", "```json", json.dumps(data, indent=2), "```", ""]
    return ["## Evaluation", "", _table(["evaluation", "metric", "score", "examples"], rows), ""]


def bridge_card(folder: str | os.PathLike[str], config: dict[str, Any], *, repo_id: str | None = None,
                num_tokens: int | None = None) -> str:
    """The ``README.md`` text for a bridge pushed alone (``config.json`` + ``model.safetensors`` in ``folder``);
    ``num_tokens``: Q, as the bridge reports it (None when it depends on the input)."""
    from huggingface_hub import ModelCard, ModelCardData

    btype = str(config.get("type", "bridge"))
    data = ModelCardData(library_name=LIBRARY, tags=[LIBRARY, "bridge", f"bridge-{btype}"])
    load_id = repo_id or "path/to/bridge"
    q = "Q" if num_tokens is None else str(num_tokens)
    body = [
        f"# {repo_id or Path(folder).name}",
        "",
        f"An xmm `{btype}` bridge: encoder features `[B, T, {config.get('input_dim')}]` -> LLM embeddings "
        f"`[B, {q}, {config.get('output_dim')}]`, {count_parameters(folder)} parameters. Only the bridge is here.",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
        "## How to load",
        "",
        "```python",
        "from xmm.registry import load_bridge",
        "",
        f'bridge = load_bridge("{load_id}")',
        "```",
        "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))
