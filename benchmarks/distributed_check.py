"""Check the plan's ``distributed`` strategies end to end on this machine: one tiny run per strategy under torchrun.

Each strategy trains the same two-stage plan (an MLP bridge, then the bridge + LoRA with gradient checkpointing; an
end-of-stage evaluation on rank 0) on xmm.testing's tiny Llama and the `vec` test modality, and prints one JSON line:
return code, wall seconds, what ``summary.json`` says about the processes, whether the ranks agree, and the largest
difference of the trained weights from the first strategy's. DeepSpeed variants need the ``deepspeed`` extra and
CUDA; they are reported as skipped otherwise. Exit status 1 when a run that could run failed.

    python benchmarks/distributed_check.py --device cpu --nproc 2                # gloo, what CPU sessions verify
    python benchmarks/distributed_check.py --device cuda --nproc 1 --strategies ddp,fsdp,zero2,zero3
    python benchmarks/distributed_check.py --device cuda --nproc 2               # NCCL: needs 2 GPUs
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "training"  # the `vec` test modality plugin and the task writer live there
sys.path.insert(0, str(TESTS))

STRATEGIES: dict[str, Any] = {
    "ddp": "ddp",
    "fsdp": "fsdp",
    "zero2": {"strategy": "deepspeed", "deepspeed": {"zero_optimization": {"stage": 2}}},
    "zero3": {"strategy": "deepspeed", "deepspeed": {"zero_optimization": {
        "stage": 3, "stage3_param_persistence_threshold": "auto", "stage3_prefetch_bucket_size": "auto",
        "reduce_bucket_size": "auto"}}},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plan(root: Path, llm: Path, strategy: Any, name: str) -> dict[str, Any]:
    from conftest import tiny_plan

    plan = tiny_plan(root, llm, distributed=strategy, output_dir=name, cache_dir=f"cache-{name}", stage={
        "max_steps": 6, "batch_size": 4, "eval": {"manifest": "train.jsonl", "limit": 4, "max_new_tokens": 3}})
    plan["stages"].append({
        "name": "tune", "trainable": ["bridge:vec", "llm:lora"], "data": {"train": "train.jsonl"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "gradient_checkpointing": True, "max_steps": 6, "batch_size": 4, "mixed_precision": "no",
        "optimizer": {"lr": 1e-3}})
    return plan


def _skip_reason(name: str, device: str) -> str | None:
    if not name.startswith("zero"):
        return None
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install 'xmm-core[deepspeed]')"
    if device != "cuda":
        return "DeepSpeed runs on GPUs only"
    return None


def _run(root: Path, plan_path: Path, nproc: int, device: str) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "XMM_HOME": str(root / "home"), "XMM_NO_PROGRESS": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "xmm.cli.main", "train", str(plan_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - t0, proc.stderr[-3000:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--nproc", type=int, default=2, help="processes per run (torchrun --nproc_per_node)")
    ap.add_argument("--strategies", default="ddp,fsdp,zero2,zero3", help=f"comma-separated, of {list(STRATEGIES)}")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary folder")
    args = ap.parse_args()

    import torch
    import yaml
    from conftest import write_task
    from safetensors.torch import load_file
    from xmm.testing import save_tiny_llm

    root = (args.workdir or Path(tempfile.mkdtemp(prefix="xmm-distributed-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    llm = root / "llm"
    if not llm.exists():
        save_tiny_llm(llm)
    write_task(root, 16)
    reference: dict[str, torch.Tensor] | None = None
    failed = False
    for name in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        line: dict[str, Any] = {"strategy": name, "device": args.device, "nproc": args.nproc}
        reason = _skip_reason(name, args.device)
        if reason is not None:
            print(json.dumps({**line, "skipped": reason}), flush=True)
            continue
        plan_path = root / f"{name}.yaml"
        plan_path.write_text(yaml.safe_dump(_plan(root, llm, STRATEGIES[name], name), sort_keys=False))
        rc, wall, err = _run(root, plan_path, args.nproc, args.device)
        line.update(rc=rc, wall_s=round(wall, 1))
        if rc != 0:
            failed = True
            print(json.dumps({**line, "error": err}), flush=True)
            continue
        summary = json.loads((root / name / "summary.json").read_text())
        line["distributed"] = summary.get("distributed")
        line["ranks_agree"] = all(len(set(s["rank_checksums"])) == 1 for s in summary["stages"])
        line["eval"] = [s.get("eval", {}).get("score") for s in summary["stages"]]
        weights = load_file(root / name / "checkpoints" / "stage-2-tune" / "trained.safetensors")
        if reference is None:
            reference, line["reference"] = weights, True
        else:
            line["max_abs_diff_to_first"] = max(float((weights[k] - reference[k]).abs().max()) for k in reference)
        print(json.dumps(line), flush=True)
    print(json.dumps({"workdir": str(root)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
