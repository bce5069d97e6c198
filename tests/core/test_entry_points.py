"""Discovery through real setuptools entry points: throw-away distributions are built and pip-installed into a
temporary site directory, then `xmm plugins --json` runs in a subprocess that has that directory on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

GOOD = '''
import torch
from xmm import hookimpl
from xmm.encoder import Encoder, EncoderOutput
from xmm.modality import ModalitySpec


class SmellEncoder(Encoder):
    id = "smell-const"
    output_dim = 3

    def preprocess(self, raw):
        return {"x": torch.tensor(raw, dtype=torch.float32).reshape(-1, 3)}

    def forward(self, x, lengths=None):
        return EncoderOutput(x, torch.ones(x.shape[:2], dtype=torch.bool))


@hookimpl
def xmm_modalities():
    return [ModalitySpec(name="smell", placeholder="<smell>", load=lambda raw: raw, encoder="smell-const")]


@hookimpl
def xmm_encoders():
    return {"smell-const": SmellEncoder}
'''

BROKEN = '''
import this_module_does_not_exist_anywhere  # the plugin's own import fails
'''


def _make_dist(root: Path, dist: str, module: str, source: str, ep_name: str) -> Path:
    pkg = root / dist
    (pkg / module).mkdir(parents=True)
    (pkg / module / "__init__.py").write_text(source)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.3.1"

            [project.entry-points.xmm]
            {ep_name} = "{module}"

            [tool.setuptools]
            packages = ["{module}"]
            """
        )
    )
    return pkg


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dists")
    site = root / "site"
    good = _make_dist(root, "xmm-plugin-smell", "xmm_plugin_smell", GOOD, "smell")
    broken = _make_dist(root, "xmm-plugin-broken", "xmm_plugin_broken", BROKEN, "broken")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(site), str(good), str(broken)],
        check=True,
        capture_output=True,
    )
    assert list(site.glob("xmm_plugin_smell-0.3.1.dist-info"))
    return site


def _xmm(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("XMM_")}
    e["PYTHONPATH"] = os.pathsep.join([str(site), e.get("PYTHONPATH", "")])
    e.update(env)
    return subprocess.run([sys.executable, "-m", "xmm.cli.main", *args], capture_output=True, text=True, env=e, timeout=120)


def test_installed_plugin_is_discovered_and_broken_one_isolated(site_dir):
    r = _xmm(site_dir, "plugins", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    smell = rows["smell"]
    assert smell["version"] == "0.3.1" and smell["distribution"] == "xmm-plugin-smell"
    assert smell["modalities"] == ["smell"] and smell["encoders"] == ["smell-const"]
    assert "error" not in smell
    broken = rows["broken"]
    assert broken["distribution"] == "xmm-plugin-broken" and broken["version"] == "0.3.1"
    assert "ModuleNotFoundError" in broken["error"] and "this_module_does_not_exist_anywhere" in broken["error"]
    assert broken["modalities"] == []
    # the failure is also reported on stderr with distribution and version
    assert "xmm-plugin-broken 0.3.1" in r.stderr


def test_table_output_marks_failed_plugin(site_dir):
    r = _xmm(site_dir, "plugins")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "VERSION"]
    assert any(line.startswith("smell") and "smell-const" in line for line in lines)
    assert any(line.startswith("broken") and "FAILED" in line for line in lines)


def test_strict_mode_turns_a_broken_plugin_into_an_error(site_dir):
    r = _xmm(site_dir, "plugins", "--json", XMM_STRICT_PLUGINS="1")
    assert r.returncode == 1
    assert "xmm-plugin-broken 0.3.1" in r.stderr and "XMM_STRICT_PLUGINS" in r.stderr


def test_blocked_plugins_are_not_loaded(site_dir):
    r = _xmm(site_dir, "plugins", "--json", XMM_STRICT_PLUGINS="1", XMM_BLOCK_PLUGINS="broken")
    assert r.returncode == 0, r.stderr
    names = {row["name"] for row in json.loads(r.stdout)}
    assert "smell" in names and "broken" not in names
    r = _xmm(site_dir, "plugins", "--json", XMM_BLOCK_PLUGINS="xmm-plugin-smell,broken")
    names = {row["name"] for row in json.loads(r.stdout)}
    assert "smell" not in names
