"""One meaning of "a checkpoint" for every command (``xmm chat``, ``eval``, ``serve``, ``push``).

A target is any of:

- a model folder: holds ``xmm.json`` (what :meth:`MultimodalLM.save_pretrained` writes);
- a run folder (``runs/<name>/``): its final ``model/``, or, while the run has not finished, the model of its latest
  training checkpoint (with a warning);
- a training checkpoint (``runs/<name>/checkpoints/<step or stage>/``): its ``model/``; the ``checkpoints/`` folder
  itself means its latest checkpoint;
- a Hub repo id (``owner/name``);
- a model config or training plan YAML: a model with fresh, untrained bridges (with a warning).

Resolving reads folder names and small files only; no model is built until :meth:`ResolvedCheckpoint.load`. A target
that looks local (``./x``, ``/x``, ``~/x``, ``runs/x`` when ``runs`` is a folder here, a ``.yaml`` name) is never
looked up on the Hub, so a typo fails at once instead of after network retries. Every failure is a typed error
naming the target and what was expected there.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from xmm.errors import CheckpointError, ConfigError
from xmm.limits import file_kind
from xmm.model.checkpoint import MANIFEST
from xmm.training.layout import CHECKPOINTS_DIR, LATEST, MODEL_DIR, PLAN_FILE, TRAINER_STATE

if TYPE_CHECKING:
    from xmm.model.multimodal import MultimodalLM

log = logging.getLogger(__name__)

Kind = Literal["model", "run", "stage", "hub", "config"]

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
MAX_CONFIG_BYTES = 4 << 20  # a model config or plan is a few KB; more is not one
LOCAL = ("a model folder (with xmm.json), a run folder (runs/<name>/ with model/) or a training checkpoint "
         "(checkpoints/<name>/ with model/)")
EXPECTED = ("a model folder (with xmm.json), a run folder (runs/<name>/ with model/), a training checkpoint "
            "(checkpoints/<name>/ with model/), a Hub repo id (owner/name) or a model config / plan YAML")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """What a checkpoint target means.

    ``kind``: ``model`` | ``run`` | ``stage`` | ``hub`` | ``config``. ``path``: the model folder (holding ``xmm.json``)
    for local checkpoints, the YAML for ``config``; None for ``hub``. ``repo_id``/``revision``: for ``hub``.
    ``plugins``: importable plugin modules the training plan named (registered before loading). ``config``: the
    validated model config for ``config``. ``warnings``: what the user should be told (untrained bridges, an
    unfinished run).
    """

    target: str
    kind: Kind
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    plugins: tuple[str, ...] = ()
    config: Any = None
    warnings: tuple[str, ...] = field(default=())

    @property
    def location(self) -> str:
        """The model folder, the config file or the repo id."""
        return str(self.path) if self.path is not None else str(self.repo_id)

    @property
    def trained(self) -> bool:
        """False for a config (fresh bridges)."""
        return self.kind != "config"

    def load(self, *, llm: Any = None, registry: Any = None, decoders: Any = None,
             on_warning: Callable[[str], None] | None = None) -> MultimodalLM:
        """Build the model: the checkpoint loaded (or the config built), after registering the plan's plugins in the
        process-wide registry (a caller who passes its own ``registry`` registers them there itself).
        ``on_warning`` receives each of :attr:`warnings` (default: logged)."""
        from xmm.model import MultimodalLM

        for message in self.warnings:
            (on_warning or log.warning)(message)
        if self.plugins and registry is None:
            from xmm.training.plugins import import_plugins

            import_plugins(list(self.plugins), source=str(self.path))
        if self.kind == "config":
            return MultimodalLM.from_config(self.config, llm=llm, registry=registry, decoders=decoders)
        return MultimodalLM.from_pretrained(self.location, llm=llm, revision=self.revision, registry=registry,
                                            decoders=decoders)


def resolve_checkpoint(target: str | os.PathLike[str], *, revision: str | None = None) -> ResolvedCheckpoint:
    """Say what ``target`` is (see the module docstring) without building a model; raises
    :class:`~xmm.errors.CheckpointError` (or :class:`~xmm.errors.ConfigError` for a bad YAML) naming it."""
    return _resolve(target, revision, local_for=None)


def resolve_local_checkpoint(target: str | os.PathLike[str], *, purpose: str) -> ResolvedCheckpoint:
    """:func:`resolve_checkpoint` for a command that reads a trained checkpoint's own files (``purpose``, e.g.
    ``xmm push``): a model folder, a run folder or a training checkpoint, with the same meanings. A Hub repo id and a
    model config are not local trained checkpoints: :class:`~xmm.errors.CheckpointError` naming the target."""
    return _resolve(target, None, local_for=purpose)


def _resolve(target: str | os.PathLike[str], revision: str | None, *, local_for: str | None) -> ResolvedCheckpoint:
    """``local_for``: the command that needs a local trained checkpoint (None: every kind of target is taken)."""
    expected = f"expected {EXPECTED}" if local_for is None else f"{local_for} needs {LOCAL}"
    text = os.fspath(target) if isinstance(target, os.PathLike) else target
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f"no checkpoint given: {expected}")
    path = Path(text).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        if local_for is not None:
            raise CheckpointError(f"{text}: no such file or folder{_missing_parent(path)}; {expected}") from None
        return _missing(text, path, revision)
    except OSError as e:  # a symlink loop, a path through a file, no permission
        raise CheckpointError(f"{text}: cannot be read ({e.strerror or e}); {expected}") from e
    if stat.S_ISDIR(st.st_mode):
        return _folder(text, path, expected)
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{text}: is {file_kind(st.st_mode)}, not a checkpoint; {expected}")
    if path.name == MANIFEST:
        return _folder(text, path.parent, expected)
    if path.suffix.lower() in CONFIG_SUFFIXES:
        if local_for is not None:
            raise CheckpointError(f"{text}: is a config file, not a trained checkpoint; {expected}")
        return _config(text, path, st.st_size)
    what = "a model config (.yaml/.yml/.json)" if local_for is None else "a checkpoint folder or its xmm.json"
    raise CheckpointError(f"{text}: is a file but not {what}; {expected}")


def load_model(target: str | os.PathLike[str], *, revision: str | None = None, llm: Any = None, registry: Any = None,
               decoders: Any = None, on_warning: Callable[[str], None] | None = None) -> MultimodalLM:
    """:func:`resolve_checkpoint` then :meth:`ResolvedCheckpoint.load`."""
    return resolve_checkpoint(target, revision=revision).load(llm=llm, registry=registry, decoders=decoders,
                                                              on_warning=on_warning)


# -- the cases ----------------------------------------------------------------------------------------------------
def _folder(text: str, path: Path, expected: str = f"expected {EXPECTED}") -> ResolvedCheckpoint:
    if (path / MANIFEST).is_file():
        # a run's model/ carries the plan it was trained with (or its run folder does); a bare save_pretrained has none
        beside = [path.parent / PLAN_FILE] if path.name == MODEL_DIR else []
        return ResolvedCheckpoint(text, "model", path, plugins=_plan_plugins(path / PLAN_FILE, *beside))
    model = path / MODEL_DIR
    if (model / MANIFEST).is_file():
        kind: Kind = "stage" if (path / TRAINER_STATE).is_file() else "run"
        # a stage checkpoint's plan, else its run's (<run>/checkpoints/<name>)
        run_plan = [path.parent.parent / PLAN_FILE] if path.parent.name == CHECKPOINTS_DIR else []
        return ResolvedCheckpoint(text, kind, model,
                                  plugins=_plan_plugins(model / PLAN_FILE, path / PLAN_FILE, *run_plan))
    if (path / LATEST).is_file():  # the checkpoints/ folder of a run
        return _latest(text, path, run=path.parent, unfinished=False)
    if (path / CHECKPOINTS_DIR / LATEST).is_file():  # a run that has not written its final model yet
        return _latest(text, path / CHECKPOINTS_DIR, run=path, unfinished=True)
    found = sorted(p.name for p in path.iterdir())[:8] if os.access(path, os.R_OK | os.X_OK) else []
    holds = f"; it holds {', '.join(found)}" if found else "; it is empty" if os.access(path, os.R_OK) else ""
    raise CheckpointError(f"{text}: is a folder but not a checkpoint (no {MANIFEST}, no {MODEL_DIR}/{MANIFEST}, no "
                          f"{CHECKPOINTS_DIR}/{LATEST}){holds}; {expected}")


def _latest(text: str, root: Path, *, run: Path, unfinished: bool) -> ResolvedCheckpoint:
    """The latest training checkpoint under ``root`` (``<run>/checkpoints``); ``latest`` must name a folder inside.
    ``unfinished``: the user named the run, which has no final model yet (said in a warning)."""
    try:
        name = (root / LATEST).read_text(encoding="utf-8", errors="replace")[:256].strip()
    except OSError as e:
        raise CheckpointError(f"{root / LATEST}: cannot be read ({e.strerror or e})") from e
    ckpt = root / name
    # a tampered `latest` must not lead out of the run (../other-run, an absolute path, a symlink elsewhere)
    if not name or "/" in name or "\\" in name or name in (".", "..") or ckpt.resolve().parent != root.resolve():
        raise CheckpointError(f"{root / LATEST}: names {name!r}, which is not a checkpoint folder inside {root}")
    if not (ckpt / MODEL_DIR / MANIFEST).is_file():
        raise CheckpointError(f"{root / LATEST}: names '{name}', which has no {MODEL_DIR}/{MANIFEST} (an incomplete "
                              "checkpoint)")
    warning = (f"{text}: the run has no final model yet; using its latest training checkpoint '{name}'"
               if unfinished else "")
    plugins = _plan_plugins(ckpt / MODEL_DIR / PLAN_FILE, ckpt / PLAN_FILE, run / PLAN_FILE)
    return ResolvedCheckpoint(text, "stage" if not warning else "run", ckpt / MODEL_DIR, plugins=plugins,
                              warnings=(warning,) if warning else ())


def _config(text: str, path: Path, size: int) -> ResolvedCheckpoint:
    import yaml

    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"is {size} bytes; a model config or plan is at most {MAX_CONFIG_BYTES}", source=text)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the config: {getattr(e, 'strerror', None) or e}", source=text) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=text) from e
    except RecursionError as e:
        raise ConfigError("nested too deeply to be a config", source=text) from e
    if not isinstance(data, dict):
        raise ConfigError(f"holds {type(data).__name__}, not a mapping of config fields; expected {EXPECTED}",
                          source=text)
    plugins: tuple[str, ...] = ()
    model: Any = data
    if "stages" in data or ("model" in data and "modalities" not in data):  # a training plan: its model config
        plugins = _plugin_list(data.get("plugins"), text)
        model = data.get("model")
        if isinstance(model, str):  # the plan names the model YAML, relative to the plan's folder
            mpath = Path(model).expanduser()
            mpath = mpath if mpath.is_absolute() else path.parent / mpath
            if not mpath.is_file():
                raise ConfigError(f"the model config '{model}' is not a file ({mpath})", field="model", source=text)
            return ResolvedCheckpoint(text, "config", path, plugins=plugins, config=_validated(mpath, text),
                                      warnings=(_untrained(text),))
        if not isinstance(model, dict):
            raise ConfigError("a training plan needs `model:` (a mapping or the path of a model config YAML)",
                              field="model", source=text)
    return ResolvedCheckpoint(text, "config", path, plugins=plugins, config=_validated(model, text),
                              warnings=(_untrained(text),))


def _validated(model: Any, source: str) -> Any:
    from xmm.model.config import MultimodalConfig
    from xmm.persist import validate_config

    if isinstance(model, Path):
        return MultimodalConfig.load(model)
    return validate_config(MultimodalConfig, model, source=source)


def _untrained(text: str) -> str:
    return (f"{text} is a model config, not a checkpoint: its bridges are untrained, so answers about media are "
            "meaningless until it is trained (xmm train)")


def _missing(text: str, path: Path, revision: str | None) -> ResolvedCheckpoint:
    if _looks_local(text, path):
        raise CheckpointError(f"{text}: no such file or folder{_missing_parent(path)}; expected {EXPECTED}")
    return ResolvedCheckpoint(text, "hub", repo_id=text, revision=revision)


def _missing_parent(path: Path) -> str:
    parent = path.parent
    return "" if parent == Path(".") or parent.is_dir() else f" (and neither is its folder {parent})"


def _looks_local(text: str, path: Path) -> bool:
    """A name the user meant as a path: whatever :func:`xmm.pretrained.looks_local` says, a name without a namespace
    (xmm checkpoints on the Hub are ``owner/name``) or a config file name."""
    from xmm.pretrained import looks_local

    return looks_local(text) or "/" not in text or path.suffix.lower() in CONFIG_SUFFIXES


def _plan_plugins(*candidates: Path) -> tuple[str, ...]:
    """The ``plugins`` of the first training plan found among ``candidates`` (none: no plugins)."""
    plan = next((p for p in candidates if p.is_file()), None)
    if plan is None:
        return ()
    import yaml

    try:
        if plan.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{plan}: is {plan.stat().st_size} bytes; a plan is at most {MAX_CONFIG_BYTES}")
        data = yaml.safe_load(plan.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise CheckpointError(f"{plan}: the training plan beside the checkpoint cannot be read: {e}") from e
    return _plugin_list(data.get("plugins") if isinstance(data, dict) else None, str(plan))


def _plugin_list(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError("must be a list of importable module names", field="plugins", source=source)
    return tuple(value)
