"""Runs as users launch them: `torchrun --nproc_per_node 2 xmm train`, and a SIGKILLed run resumed with --resume."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from xmm.training.loop import train

XMM = [sys.executable, "-m", "xmm.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path: Path, tiny_llm_dir: Path, subprocess_env, tiny_plan, write_plan, write_task,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # both runs on the CPU (gloo), also where CUDA is visible: two ranks cannot share one GPU ("invalid device ordinal")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    write_task(tmp_path, 16, bad_lines=True)
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 4, "batch_size": 4})
    path = write_plan(tmp_path, {**plan, "output_dir": "ddp"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "xmm.cli.main", "train", str(path), "--json"]
    env = {**subprocess_env(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    sums = summary["stages"][0]["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both processes ended with bit-identical trained weights
    assert summary["bad_samples"]["by_kind"] == {"invalid_json": 1, "unreadable_media": 2}  # each sample counted once

    single = train({**plan, "output_dir": "single"}, base_dir=tmp_path)
    assert single.stages[0]["rank_checksums"][0] != "" and len(single.stages[0]["rank_checksums"]) == 1
    a = load_file(tmp_path / "ddp" / "model" / "bridges" / "vec" / "model.safetensors")
    b = load_file(tmp_path / "single" / "model" / "bridges" / "vec" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k  # same global batch: same math as one process


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, tiny_llm_dir: Path, subprocess_env, tiny_plan, write_plan, write_task) -> None:
    write_task(tmp_path, 16)
    # one thread in every process: `auto` follows the free cores, and another thread count sums in another order
    plan = tiny_plan(tmp_path, tiny_llm_dir, stage={"max_steps": 4}, checkpoint_every=3, threads=1)
    plan["stages"].append({
        "name": "tune", "trainable": ["bridge:vec", "llm:lora"], "data": {"train": "train.jsonl"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},  # dropout: RNG matters
        "gradient_checkpointing": True, "grad_accum": 2, "max_steps": 60, "batch_size": 4, "mixed_precision": "no",
        "optimizer": {"lr": 1e-3}, "schedule": {"type": "cosine", "warmup_steps": 3},
    })
    killed = write_plan(tmp_path, {**plan, "output_dir": "killed"}, "killed.yaml")
    env = subprocess_env(tmp_path)
    proc = subprocess.Popen([*XMM, "train", str(killed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 240
    at = ""
    try:
        while time.time() < deadline and proc.poll() is None:
            at = latest.read_text().strip() if latest.exists() else ""
            if at.startswith("step-") and int(at[5:]) > 4:  # a periodic checkpoint inside the second stage
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-3000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and at
    assert not (tmp_path / "killed" / "model").exists()
    resumed = subprocess.run([*XMM, "train", str(killed), "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    full = train({**plan, "output_dir": "full"}, base_dir=tmp_path)  # uninterrupted, same thread count
    a = load_file(tmp_path / "full" / "checkpoints" / "stage-2-tune" / "trained.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "stage-2-tune" / "trained.safetensors")
    assert set(a) == set(b) and any("lora_A" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.global_step == 64
    log = [json.loads(line) for line in (tmp_path / "killed" / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "event" not in r] == list(range(1, 65))  # no step logged twice
