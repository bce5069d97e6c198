"""The template end to end: bake a plugin, install it into a fresh virtual environment beside xmm-core, check that
`xmm plugins` lists the new modality, and run the generated package's own tests there.

The fresh venv reuses this environment's installed packages (torch, xmm-core...) through a .pth file instead of
reinstalling them, and the plugin is installed editable without build isolation: no network, a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from xmm.cli.new import new_modality_plugin

pytestmark = pytest.mark.slow


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XMM_BLOCK_PLUGINS", "XMM_STRICT_PLUGINS")}
    env["PIP_NO_INDEX"] = "1"  # nothing may come from the network
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kw)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "env"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    assert made.returncode == 0, made.stderr
    python = root / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # addsitedir (not a plain path line) so that this environment's own .pth files - the editable xmm-core - apply too
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib, "_xmm_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return root


def test_baked_plugin_installs_is_listed_and_passes_its_own_tests(venv, tmp_path, fresh_registry):
    path = new_modality_plugin("thermal", tmp_path, extensions=".npy,.csv", bridge="mlp")
    python = str(venv / "bin" / "python")
    assert _run([python, "-c", "import xmm_plugin_thermal"]).returncode != 0  # not there before installing

    installed = _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "-e", str(path)])
    assert installed.returncode == 0, installed.stderr[-3000:]

    listed = _run([python, "-m", "xmm.cli.main", "plugins", "--json"])
    assert listed.returncode == 0, listed.stderr[-3000:]
    plugin = next(p for p in json.loads(listed.stdout) if p["name"] == "thermal")
    assert plugin["distribution"] == "xmm-plugin-thermal" and plugin["version"] == "0.1.0"
    assert plugin["modalities"] == ["thermal"] and plugin["encoders"] == ["thermal-features"]
    assert "error" not in plugin

    tests = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=path)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "6 passed" in tests.stdout

    # this environment is untouched: the plugin exists only in the fresh venv
    assert _run([sys.executable, "-c", "import xmm_plugin_thermal"]).returncode != 0
