"""`xmm demo --quick` end to end: real SmolLM2, real EfficientNet-Lite0, the installed device and image plugins."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.llm]


def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "xmm.cli.main", "demo", "--quick", "--json", "--output", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout)
    assert res["mode"] == "quick"
    rows = res["results"]
    assert {row["modality"] for row in rows} == {"device", "image"}
    for modality in ("device", "image"):
        overall = [row for row in rows if row["modality"] == modality and row["task"] == "all"]
        assert len(overall) == 1
        row = overall[0]
        assert row["metric"] == "exact" and row["n"] > 0
        assert 0.0 <= row["before"] <= 1.0 and 0.0 <= row["after"] <= 1.0
        assert 0.0 < row["chance"] < 1.0
    # per-task rows come from meta.task of the held-out manifests
    image_tasks = {row["task"] for row in rows if row["modality"] == "image"} - {"all"}
    assert image_tasks and image_tasks <= {"colour", "shape", "position", "count"}
    # the held-out manifests are in the trainer's format, so `xmm eval` can score them with the trained checkpoint
    model_dir = Path(res["model_dir"])
    assert (model_dir / "xmm.json").exists()
    test_manifest = out / "data" / "device" / "test.jsonl"
    r2 = subprocess.run([sys.executable, "-m", "xmm.cli.main", "eval", str(model_dir), str(test_manifest),
                         "--metric", "exact", "--json", "--limit", "8"], capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    scored = json.loads(r2.stdout)
    assert scored["n"] == 8 and scored["metric"] == "exact"
    # reports and chat examples
    for key in ("results_png", "results_json", "loss_curve_png"):
        assert Path(res["files"][key]).stat().st_size > 0
    assert res["examples"] and all(ex["files"] and ex["answer"] is not None for ex in res["examples"])
    # train and held-out data are separate files
    def digests(pattern: str) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "data" / "image" / "images").glob(pattern)}

    train_imgs, test_imgs = digests("train_*.png"), digests("test_*.png")
    assert train_imgs and test_imgs and not train_imgs & test_imgs
