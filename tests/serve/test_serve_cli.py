"""`xmm serve` as a user runs it: a subprocess over a saved checkpoint whose plan names its plugin module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from xmm_serve_testkit import HERE, build_model, image_message


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("cli") / "myrun"
    build_model(tiny_llm_dir).save_pretrained(run / "model")
    (run / "plan.yaml").write_text("plugins: [xmm_serve_test_plugin]\nmodel: {}\nstages: []\n")
    return run


def _env() -> dict[str, str]:
    """The test plugin importable by name; the installed modality plugins blocked (their names are the test's)."""
    from importlib.metadata import entry_points

    installed = sorted({ep.name for ep in entry_points(group="xmm")})
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "XMM_BLOCK_PLUGINS": ",".join(installed)}


def test_serve_a_run_folder_and_call_it(checkpoint: Path):
    from openai import OpenAI

    proc = subprocess.Popen([sys.executable, "-m", "xmm.cli.main", "serve", str(checkpoint), "--port", "0",
                             "--api-key", "k1"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=_env())
    try:
        url = None
        deadline = time.monotonic() + 120
        lines = []
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            m = re.search(r"serving 'myrun' \(audio, device, image\) on (http://127\.0\.0\.1:\d+)/v1", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        client = OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        for _ in range(100):  # the line is printed just before uvicorn binds
            try:
                assert [m.id for m in client.models.list().data] == ["myrun"]
                break
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.1)
        out = client.chat.completions.create(model="myrun", messages=image_message(), max_tokens=4)
        assert out.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    # uvicorn shuts down gracefully, then re-raises the signal it caught: killed by SIGTERM, but cleanly
    assert proc.returncode in (0, -15) and "Traceback" not in rest, rest


@pytest.mark.parametrize("target,words", [("./no-such-run", "no such file or folder"),
                                          ("bad.txt", "not a model config")])
def test_a_bad_checkpoint_is_one_line_and_exit_1(tmp_path: Path, target: str, words: str):
    (tmp_path / "bad.txt").write_text("x")
    r = subprocess.run([sys.executable, "-m", "xmm.cli.main", "serve", target], capture_output=True, text=True,
                       cwd=tmp_path, env=_env(), timeout=120)
    assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr
