"""`xmm new modality`: answers are validated before anything is written; the template renders a complete plugin."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import xmm
from typer.testing import CliRunner
from xmm.cli.main import app, main
from xmm.cli.new import new_modality_plugin, template_dir
from xmm.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry_with_smell(fresh_registry):
    """The process-wide registry plus an in-process plugin that owns the modality `smell` (placeholder <nose>)."""
    from xmm import hookimpl
    from xmm.modality import ModalitySpec

    class Smell:
        @hookimpl
        def xmm_modalities(self):
            return [ModalitySpec("smell", "<nose>", load=lambda raw: raw, default_encoder="none")]

    info = fresh_registry.register(Smell(), name="smell-plugin", distribution="xmm-plugin-smell", version="2.0")
    assert info.error is None
    return fresh_registry


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Thermal", "not a valid modality name"),
        ("3d_scan", "not a valid modality name"),
        ("depth-map", "not a valid modality name"),
        ("", "not a valid modality name"),
        ("class", "is a Python keyword"),
        ("text", "is reserved"),
    ],
)
def test_bad_names_are_refused_before_anything_is_written(tmp_path, capsys, registry_with_smell, name, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["new", "modality", name, "--output", str(out), "--no-input"])
    assert done.value.code == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_collision_with_an_installed_modality_is_refused(tmp_path, capsys, registry_with_smell):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as done:
        main(["new", "modality", "smell", "--output", str(out), "--no-input"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert "a modality named 'smell' is already installed by plugin 'smell-plugin' (xmm-plugin-smell 2.0)" in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="'<nose>' is already the placeholder of the installed modality 'smell'"):
        new_modality_plugin("sniff", tmp_path / "out", placeholder="<nose>")
    with pytest.raises(ConfigError, match="no bridge type 'warp-drive' is registered"):
        new_modality_plugin("sniff", tmp_path / "out", bridge="warp-drive")
    with pytest.raises(ConfigError, match="is not a file extension"):
        new_modality_plugin("sniff", tmp_path / "out", extensions=".ok, not valid!")
    with pytest.raises(ConfigError, match="must look like"):
        new_modality_plugin("sniff", tmp_path / "out", placeholder="sniff")
    assert not out.exists()


def test_existing_target_folder_is_not_overwritten(tmp_path, fresh_registry):
    (tmp_path / "xmm-plugin-sniff").mkdir()
    (tmp_path / "xmm-plugin-sniff" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        new_modality_plugin("sniff", tmp_path)
    assert [p.name for p in (tmp_path / "xmm-plugin-sniff").iterdir()] == ["keep.txt"]


def test_rendered_plugin_has_the_answers(tmp_path, fresh_registry):
    path = new_modality_plugin("depth_map", tmp_path, placeholder="<depth>", extensions="NPY, .csv",
                               bridge="linear", description="Depth maps")
    assert path == tmp_path / "xmm-plugin-depth-map"
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert files == [
        "CONTRIBUTING.md",
        "README.md",
        "pyproject.toml",
        "src/xmm_plugin_depth_map/__init__.py",
        "src/xmm_plugin_depth_map/encoder.py",
        "src/xmm_plugin_depth_map/modality.py",
        "src/xmm_plugin_depth_map/plugin.py",
        "tests/test_depth_map_plugin.py",
    ]
    meta = tomllib.loads((path / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "xmm-plugin-depth-map"
    assert meta["project"]["entry-points"]["xmm"] == {"depth_map": "xmm_plugin_depth_map.plugin"}
    assert f"xmm-core>={xmm.__version__}" in meta["project"]["dependencies"]
    assert "all" in meta["project"]["optional-dependencies"]
    modality = (path / "src/xmm_plugin_depth_map/modality.py").read_text()
    assert 'PLACEHOLDER = "<depth>"' in modality
    assert '".npy,.csv".split(",")' in modality
    assert 'default_bridge="linear"' in modality
    assert "class DepthMapEncoder(Encoder)" in (path / "src/xmm_plugin_depth_map/encoder.py").read_text()
    # the generated code is lint-clean under the project's own rules, linted as its own project
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--line-length", "120",
                           "--select", "E,F,W,I,B,UP", "."], capture_output=True, text=True, cwd=path)
    assert lint.returncode == 0, lint.stdout


def test_interactive_prompts_fill_the_answers(tmp_path, fresh_registry):
    answers = "\n".join(["<scent>", ".txt", "mlp", "Scents", "Ann"]) + "\n"
    result = CliRunner().invoke(app, ["new", "modality", "aroma", "--output", str(tmp_path)], input=answers)
    assert result.exit_code == 0, result.output
    assert "Placeholder token in prompts [<aroma>]" in result.output
    path = tmp_path / "xmm-plugin-aroma"
    assert 'PLACEHOLDER = "<scent>"' in (path / "src/xmm_plugin_aroma/modality.py").read_text()
    meta = tomllib.loads((path / "pyproject.toml").read_text())
    assert meta["project"]["authors"] == [{"name": "Ann"}] and meta["project"]["description"] == "Scents"


def test_plain_cookiecutter_runs_the_same_checks(tmp_path):
    """The template also works with the cookiecutter command; its hook refuses bad names and removes its output."""
    from cookiecutter.exceptions import FailedHookException
    from cookiecutter.main import cookiecutter

    config = tmp_path / "cc.yaml"
    config.write_text(f"cookiecutters_dir: {tmp_path / 'cc'}\nreplay_dir: {tmp_path / 'replay'}\n")
    with pytest.raises(FailedHookException):
        cookiecutter(str(template_dir()), no_input=True, extra_context={"modality": "Bad-Name"},
                     output_dir=str(tmp_path / "out"), config_file=str(config))
    assert list((tmp_path / "out").glob("*")) == []
    made = cookiecutter(str(template_dir()), no_input=True, extra_context={"modality": "scent"},
                        output_dir=str(tmp_path / "out"), config_file=str(config))
    assert Path(made).name == "xmm-plugin-scent"


def test_template_ships_inside_the_wheel(tmp_path):
    """`xmm new` must work from a wheel: the template is package data of xmm-core."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "core", src / "core", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO_ROOT / "templates", src / "templates", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("xmm_core-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"xmm/templates/{p.relative_to(REPO_ROOT / 'templates').as_posix()}"
                for p in (REPO_ROOT / "templates").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert "xmm/templates/xmm-plugin/cookiecutter.json" in expected
    assert expected <= names
