"""``xmm new modality NAME``: generate a modality plugin distribution from the cookiecutter template.

The template ships inside xmm-core (``xmm/templates/xmm-plugin``; ``templates/`` at the repository root is the same
folder), so the command works from a wheel. Every answer is checked before anything is written: the name must be a
lowercase Python identifier that no installed plugin uses, the placeholder must look like ``<name>`` and be free, the
default bridge must be registered and the target folder must not exist. Free-text answers (description, author) are
data, never templates: they are put into the rendered context after cookiecutter has rendered its own variables, so
``{{ ... }}`` in them is written out literally, not run.
"""

from __future__ import annotations

import importlib.metadata as md
import keyword
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from xmm.errors import ConfigError, MissingDependencyError, XmmError

TEMPLATE = "xmm-plugin"
# content-part types of chat messages that are not modalities; a modality of that name would be ambiguous
RESERVED_NAMES = frozenset({"text"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EXTENSION = re.compile(r"^\.[a-z0-9][a-z0-9_.+-]*$")
_PLACEHOLDER = re.compile(r"^<[\w.:|/-]+>$")
MAX_NAME_CHARS = 64  # the distribution folder and package are named after it (file names stop at 255 bytes)
MAX_TEXT_CHARS = 300
# description / author go into pyproject.toml strings: no quotes, backslashes or control characters
_TEXT_FORBIDDEN = re.compile(r'["\\\x00-\x1f\x7f]')


@dataclass(frozen=True)
class PluginAnswers:
    """Validated answers for the template."""

    modality: str
    placeholder: str
    extensions: tuple[str, ...]
    bridge: str
    description: str
    author: str

    @property
    def dist_name(self) -> str:
        return f"xmm-plugin-{self.modality.replace('_', '-')}"


def template_dir() -> Path:
    """The plugin template folder inside the installed xmm package."""
    import xmm

    path = Path(xmm.__file__).parent / "templates" / TEMPLATE
    if not (path / "cookiecutter.json").is_file():
        raise XmmError(f"the plugin template is missing from this xmm-core installation (expected {path}); reinstall xmm-core")
    return path


def template_defaults() -> dict[str, Any]:
    """The template's own defaults (``cookiecutter.json``) for the prompts."""
    import json

    return json.loads((template_dir() / "cookiecutter.json").read_text())


def validate_modality_name(name: str) -> str:
    """Refuse names that are not lowercase identifiers, are keywords or reserved, or that an installed plugin uses."""
    if isinstance(name, str) and len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"a modality name has at most {MAX_NAME_CHARS} characters, got {len(name)}", field="modality")
    if not isinstance(name, str) or not _NAME.match(name) or not name.isidentifier():
        raise ConfigError(
            f"{name!r} is not a valid modality name: use a lowercase Python identifier (letters, digits, underscores, "
            "starting with a letter), e.g. 'thermal' or 'depth_map'",
            field="modality",
        )
    if keyword.iskeyword(name):
        raise ConfigError(f"{name!r} is a Python keyword and cannot name a modality package", field="modality")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is reserved: chat messages use content parts of type '{name}'", field="modality")
    from xmm.registry import get_registry

    reg = get_registry()
    if name in reg.modalities:
        owner = next((p for p in reg.plugins if name in p.modalities), None)
        by = f" by plugin '{owner.name}' ({owner.distribution} {owner.version})" if owner else ""
        raise ConfigError(f"a modality named {name!r} is already installed{by}; pick another name", field="modality")
    for ep in md.entry_points(group="xmm"):
        if ep.name == name:
            dist = ep.dist.name if ep.dist is not None else "?"
            raise ConfigError(f"an xmm plugin entry point named {name!r} is already installed (from {dist}); pick another name",
                              field="modality")
    dist = f"xmm-plugin-{name.replace('_', '-')}"
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        return name
    raise ConfigError(f"the distribution {dist!r} is already installed; pick another name", field="modality")


def normalise_extensions(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``".npy, txt"`` -> ``(".npy", ".txt")``: lowercase, with a leading dot, no duplicates."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for part in parts:
        ext = part.strip().lower()
        if not ext:
            continue
        ext = ext if ext.startswith(".") else f".{ext}"
        if not _EXTENSION.match(ext):
            raise ConfigError(f"{part.strip()!r} is not a file extension (e.g. '.npy')", field="file_extensions")
        if ext not in out:
            out.append(ext)
    return tuple(out)


def validate_answers(
    name: str,
    *,
    placeholder: str | None = None,
    extensions: str | list[str] | tuple[str, ...] = (),
    bridge: str = "mlp",
    description: str | None = None,
    author: str = "xmm contributors",
) -> PluginAnswers:
    """Check every answer (see the module docstring) and return them normalised."""
    name = validate_modality_name(name)
    placeholder = placeholder or f"<{name}>"
    if not _PLACEHOLDER.match(placeholder):
        raise ConfigError(f"{placeholder!r} must look like '<{name}>': angle brackets around letters, digits and "
                          "_ - . : | /", field="placeholder")
    from xmm.registry import get_registry

    reg = get_registry()
    taken = {spec.placeholder: spec.name for spec in reg.modalities.values()}
    if placeholder in taken:
        raise ConfigError(f"{placeholder!r} is already the placeholder of the installed modality '{taken[placeholder]}'",
                          field="placeholder")
    if bridge not in reg.bridges:
        raise ConfigError(f"no bridge type {bridge!r} is registered; choose one of {sorted(reg.bridges)}",
                          field="default_bridge")
    for value, field in ((description, "description"), (author, "author")):
        if value is None:
            continue
        if _TEXT_FORBIDDEN.search(value):
            raise ConfigError("must be one line without double quotes, backslashes or control characters (it goes "
                              "into pyproject.toml)", field=field)
        if len(value) > MAX_TEXT_CHARS:
            raise ConfigError(f"has at most {MAX_TEXT_CHARS} characters, got {len(value)}", field=field)
    return PluginAnswers(
        modality=name,
        placeholder=placeholder,
        extensions=normalise_extensions(extensions),
        bridge=bridge,
        description=description or f"The {name} modality for xmm",
        author=author,
    )


def generate_plugin(answers: PluginAnswers, output_dir: str | Path = ".") -> Path:
    """Render the template for validated ``answers`` into ``output_dir/xmm-plugin-<name>``; returns that folder."""
    import xmm

    output_dir = _check_output(Path(output_dir))
    target = output_dir / answers.dist_name
    if os.path.lexists(target):
        raise ConfigError(f"{target} already exists; remove it or choose another --output", field="output")
    try:
        from cookiecutter.exceptions import CookiecutterException
        from cookiecutter.generate import generate_context, generate_files
        from cookiecutter.prompt import prompt_for_config
    except ImportError as e:
        raise MissingDependencyError("cookiecutter", extra="template", purpose="xmm new") from e
    tpl = template_dir()
    # only values that the checks above restrict to safe characters are rendered by cookiecutter; the free text goes in
    # after rendering (cookiecutter renders every answer as a Jinja template, which would run code in it)
    context = generate_context(
        context_file=str(tpl / "cookiecutter.json"),
        extra_context={
            "modality": answers.modality,
            "placeholder": answers.placeholder,
            "file_extensions": ",".join(answers.extensions),
            "description": "",
            "author": "",
        },
    )
    # the bridge was checked against the registry, which may know more types than the template's static choices
    context["cookiecutter"]["default_bridge"] = [answers.bridge]
    context["cookiecutter"]["__xmm_version"] = xmm.__version__
    # cookiecutter's high-level entry point also writes a replay file under ~; the two steps below do not
    rendered = prompt_for_config(context, no_input=True)
    rendered.update({"description": answers.description, "author": answers.author})
    rendered.update({"_template": str(tpl), "_output_dir": str(output_dir.resolve()), "_repo_dir": str(tpl)})
    context = OrderedDict(cookiecutter=rendered, _cookiecutter={k: v for k, v in rendered.items() if not k.startswith("_")})
    # the hook repeats the checks for plain `cookiecutter` users; they were done above
    try:
        return Path(generate_files(repo_dir=str(tpl), context=context, output_dir=str(output_dir), accept_hooks=False))
    except OSError as e:
        raise ConfigError(f"cannot write the plugin into {output_dir}: {e.strerror or e}", field="output") from None
    except CookiecutterException as e:
        raise XmmError(f"cannot render the plugin template into {output_dir}: {e}") from None


def _check_output(output_dir: Path) -> Path:
    """``output_dir`` created if needed; a file, an unwritable folder or an over-long path is a ConfigError."""
    if os.path.lexists(output_dir) and not output_dir.is_dir():
        raise ConfigError(f"{output_dir} is not a folder", field="output")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {output_dir}: {e.strerror or e}", field="output") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into {output_dir}: permission denied", field="output")
    return output_dir


def new_modality_plugin(name: str, output_dir: str | Path = ".", **answers: Any) -> Path:
    """Validate the answers, then generate the plugin distribution; returns its folder."""
    return generate_plugin(validate_answers(name, **answers), output_dir)


def register(app: typer.Typer) -> None:
    new_app = typer.Typer(help="Create new xmm components from templates.", no_args_is_help=True)

    @new_app.command("modality")
    def modality(
        name: str = typer.Argument(..., help="Modality name: a lowercase Python identifier, e.g. 'thermal'."),
        output: Path = typer.Option(Path("."), "--output", "-o", help="Folder to create xmm-plugin-NAME in."),
        placeholder: str = typer.Option(None, help="Placeholder token in prompts (default: <NAME>)."),
        extensions: str = typer.Option(None, help="Input file types, comma-separated, e.g. '.npy,.csv'."),
        bridge: str = typer.Option(None, help="Default bridge type (a registered bridge, e.g. mlp)."),
        description: str = typer.Option(None, help="One-line description of the plugin."),
        author: str = typer.Option(None, help="Author name for pyproject.toml."),
        no_input: bool = typer.Option(False, "--no-input", help="Do not ask; use the options and the template defaults."),
    ) -> None:
        """Generate a modality plugin distribution (xmm-plugin-NAME) from the cookiecutter template."""
        from xmm.registry import get_registry

        validate_modality_name(name)  # fail before asking anything else
        defaults = template_defaults()
        bridges = sorted(get_registry().bridges)
        default_bridge = next((b for b in defaults["default_bridge"] if b in bridges), bridges[0] if bridges else "mlp")
        answers = {
            "placeholder": placeholder,
            "extensions": extensions,
            "bridge": bridge,
            "description": description,
            "author": author,
        }
        fallback = {
            "placeholder": f"<{name}>",
            "extensions": defaults["file_extensions"],
            "bridge": default_bridge,
            "description": f"The {name} modality for xmm",
            "author": defaults["author"],
        }
        questions = {
            "placeholder": "Placeholder token in prompts",
            "extensions": "Input file types (comma-separated extensions)",
            "bridge": f"Default bridge ({', '.join(bridges)})",
            "description": "One-line description",
            "author": "Author",
        }
        for key, value in answers.items():
            if value is None:
                answers[key] = fallback[key] if no_input else typer.prompt(questions[key], default=fallback[key])
        path = new_modality_plugin(name, output, **answers)
        typer.echo(f"created {path}")
        typer.echo(f"next: pip install -e {path} && xmm plugins && python -m pytest {path / 'tests'}")

    app.add_typer(new_app, name="new")
