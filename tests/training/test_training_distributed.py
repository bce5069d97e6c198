"""Training past one process: the plan's `distributed` section, FSDP (torch's FSDP2 over the frozen LLM layers) under
`torchrun` with 2 processes and with 2 "nodes" on 127.0.0.1, and `--resume` of a killed FSDP run.

Every multi-process run here is pinned to the CPU and gloo (CUDA hidden, ACCELERATE_USE_CPU), also on a machine with a
GPU: two ranks cannot share one GPU, and CPU runs are the ones compared bit for bit. The in-process reference runs
use the CPU too.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from xmm.errors import ConfigError, MissingDependencyError
from xmm.training.distributed import make_accelerator
from xmm.training.loop import train
from xmm.training.plan import load_plan

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
TRAIN = ["-m", "xmm.cli.main", "train"]
# a frozen weight inside a decoder layer that the FSDP plan trains: it must stay whole (never sharded)
LAYER_NORM = "llm.model.layers.1.post_attention_layernorm.weight"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cpu_env(tmp_path: Path, subprocess_env: Any) -> dict[str, str]:
    """Environment of `torchrun` runs: CPU and gloo even where CUDA is visible."""
    return {**subprocess_env(tmp_path), "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}


@pytest.fixture
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process `train()` on the CPU (the reference the CPU torchrun runs are compared with)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")


def _torchrun(args: list[str], plan: Path, env: dict[str, str], *extra: str, timeout: int = 400) -> None:
    proc = subprocess.run([*TORCHRUN, *args, *TRAIN, str(plan), *extra], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=plan.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _single_node(port: int) -> list[str]:
    return ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port)]


# -- the plan section ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("section", "strategy"), [
    ("fsdp", "fsdp"),
    ({"strategy": "ddp"}, "ddp"),
    ({"strategy": "fsdp", "fsdp": {"layers": ["LlamaDecoderLayer"], "reshard_after_forward": False}}, "fsdp"),
    ({"strategy": "deepspeed", "deepspeed": "ds_zero2.json"}, "deepspeed"),
])
def test_distributed_section_forms(tmp_path: Path, tiny_plan: Any, section: Any, strategy: str) -> None:
    plan = load_plan({**tiny_plan(tmp_path, tmp_path / "llm"), "distributed": section}, base_dir=tmp_path)
    assert plan.distributed is not None and plan.distributed.strategy == strategy
    again = load_plan(yaml.safe_load(plan.to_yaml()), base_dir=tmp_path)  # the plan a run writes beside itself
    assert again.distributed == plan.distributed


def test_a_plan_without_the_section_is_ddp_and_dumps_as_before(tmp_path: Path, tiny_plan: Any) -> None:
    plan = load_plan(tiny_plan(tmp_path, tmp_path / "llm"), base_dir=tmp_path)
    assert plan.distributed is None and "distributed" not in plan.to_yaml()  # old plans keep their fingerprint


@pytest.mark.parametrize(("section", "message"), [
    ({"strategy": "deepspeed"}, "needs 'deepspeed'"),
    ({"deepspeed": {"zero_optimization": {"stage": 2}}}, "strategy is 'ddp'"),
    ({"strategy": "ddp", "fsdp": {"cpu_offload": True}}, "'fsdp' is set but strategy is 'ddp'"),
    ({"strategy": "zero3"}, "'ddp', 'fsdp' or 'deepspeed'"),
    ({"strategy": "fsdp", "fsdp": {"layers": []}}, "at least 1"),
])
def test_distributed_section_errors_name_the_field(tmp_path: Path, tiny_plan: Any, section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_plan({**tiny_plan(tmp_path, tmp_path / "llm"), "distributed": section}, base_dir=tmp_path)
    assert err.value.field is not None and err.value.field.startswith("distributed")


@pytest.mark.parametrize(("config", "error", "message"), [
    ("missing.json", ConfigError, "cannot read the DeepSpeed config"),
    ("broken.json", ConfigError, "not valid JSON"),
    ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}, ConfigError, r"sets \['optimizer'\]"),
    ({"gradient_accumulation_steps": 4, "train_micro_batch_size_per_gpu": "auto"}, ConfigError,
     r"sets \['gradient_accumulation_steps'\]"),
    ({"zero_optimization": {"stage": 2}}, MissingDependencyError, r"xmm-core\[deepspeed\]"),
])
def test_deepspeed_config_is_checked_and_the_missing_extra_named(tmp_path: Path, tiny_plan: Any, config: Any,
                                                                 error: type[Exception], message: str) -> None:
    if error is MissingDependencyError and importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here: the missing-extra error cannot happen")
    (tmp_path / "broken.json").write_text("{not json")
    plan = load_plan({**tiny_plan(tmp_path, tmp_path / "llm"),
                      "distributed": {"strategy": "deepspeed", "deepspeed": config}}, base_dir=tmp_path)
    with pytest.raises(error, match=message):
        make_accelerator(plan)


# -- FSDP on CPU/gloo ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fsdp_two_processes_match_one_process(tmp_path: Path, tiny_llm_dir: Path, cpu_env: dict[str, str],
                                              cpu_only: None, tiny_plan: Any, write_plan: Any, write_task: Any) -> None:
    """2-process FSDP trains what one process trains: the sharded layers compute with the gathered weights, the
    trained parts (the bridge and a layer norm inside a sharded layer) stay whole, and rank 0 evaluates alone."""
    write_task(tmp_path, 16)
    plan = tiny_plan(tmp_path, tiny_llm_dir, distributed="fsdp", stage={
        "max_steps": 4, "batch_size": 4, "trainable": ["bridge:vec", LAYER_NORM],
        "eval": {"manifest": "train.jsonl", "limit": 4, "max_new_tokens": 3, "batch_size": 4}})
    path = write_plan(tmp_path, {**plan, "output_dir": "fsdp"}, "fsdp.yaml")
    _torchrun(_single_node(_free_port()), path, cpu_env, "--json")

    summary = json.loads((tmp_path / "fsdp" / "summary.json").read_text())
    fsdp = summary["distributed"]["fsdp"]
    # every frozen weight of the 2 layers (9 each) but the trained norm is sharded; each process holds half of them
    assert summary["distributed"]["processes"] == 2 and fsdp["layers"] == 2 and fsdp["sharded_parameters"] == 17
    assert 2 * fsdp["local_elements"] == fsdp["sharded_elements"]
    sums = summary["stages"][0]["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    evaluated = json.loads((tmp_path / "fsdp" / "checkpoints" / "stage-1-align" / "model" / "eval.json").read_text())
    assert evaluated["n"] == 4  # rank 0 ran generation alone on the gathered layers

    train({**plan, "output_dir": "single"}, base_dir=tmp_path)
    single = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert single["distributed"] == {"strategy": "fsdp", "processes": 1}  # one process: nothing to shard
    a = load_file(tmp_path / "fsdp" / "checkpoints" / "stage-1-align" / "trained.safetensors")
    b = load_file(tmp_path / "single" / "checkpoints" / "stage-1-align" / "trained.safetensors")
    assert set(a) == set(b) and LAYER_NORM in a
    for k in a:
        # the same global batch; two processes sum the gradients of its halves in another order: equal to ~1e-8
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), (k, (a[k] - b[k]).abs().max())


@pytest.mark.slow
def test_fsdp_on_two_nodes_then_a_killed_run_resumes_bit_identical(
        tmp_path: Path, tiny_llm_dir: Path, cpu_env: dict[str, str], tiny_plan: Any, write_plan: Any,
        write_task: Any) -> None:
    """`torchrun --nnodes 2 --nproc_per_node 1` twice on 127.0.0.1 (c10d rendezvous): both nodes finish with the
    same weights. The same plan on one node, killed inside its LoRA stage (gradient checkpointing, accumulation,
    dropout) and resumed, ends bit-identical to it: same world size, same ranks, same math."""
    write_task(tmp_path, 16)
    # rank 0 evaluates the first stage alone; the next stage's backward must not see that evaluation's forwards.
    # No feature cache: a process that computes an example another process cached in this stage (or rank 0's
    # evaluation) gets other last bits (another batch), and a resumed process reads the other's copy instead
    plan = tiny_plan(tmp_path, tiny_llm_dir, distributed="fsdp", checkpoint_every=3, stage={
        "max_steps": 4, "feature_cache": False,
        "eval": {"manifest": "train.jsonl", "limit": 4, "max_new_tokens": 3, "batch_size": 4}})
    plan["stages"].append({
        "name": "tune", "trainable": ["bridge:vec", "llm:lora"], "data": {"train": "train.jsonl"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        "gradient_checkpointing": True, "grad_accum": 2, "max_steps": 16, "batch_size": 4, "mixed_precision": "no",
        "optimizer": {"lr": 1e-3}, "schedule": {"type": "cosine", "warmup_steps": 3}, "feature_cache": False,
    })

    # each run its own feature cache, as on separate machines
    nodes = write_plan(tmp_path, {**plan, "output_dir": "nodes", "cache_dir": "cache-nodes"}, "nodes.yaml")
    endpoint = f"127.0.0.1:{_free_port()}"
    launch = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
              endpoint, "--rdzv_id", "xmm-two-nodes", "--local_addr", "127.0.0.1", *TRAIN, str(nodes)]
    procs = [subprocess.Popen(launch, env=cpu_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errors = [p.communicate(timeout=400)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    summary = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert summary["distributed"]["processes"] == 2 and summary["distributed"]["fsdp"]["sharded_parameters"] == 18
    for stage in summary["stages"]:
        assert len(stage["rank_checksums"]) == 2 and len(set(stage["rank_checksums"])) == 1, stage

    killed = write_plan(tmp_path, {**plan, "output_dir": "killed", "cache_dir": "cache-killed"}, "killed.yaml")
    cmd = [*TORCHRUN, *_single_node(_free_port()), *TRAIN, str(killed)]
    proc = subprocess.Popen(cmd, env=cpu_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline, at = time.time() + 300, ""
    try:
        while time.time() < deadline and proc.poll() is None:
            at = latest.read_text().strip() if latest.exists() else ""
            if at.startswith("step-") and int(at[5:]) > 4:  # a periodic checkpoint inside the LoRA stage
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()[1][-3000:]}"
        proc.send_signal(signal.SIGTERM)  # torchrun ends its workers at once (a preempted job)
    finally:
        proc.communicate(timeout=120)
    assert proc.returncode != 0 and at and not (tmp_path / "killed" / "model").exists()
    _torchrun(_single_node(_free_port()), killed, cpu_env, "--resume")

    a = load_file(tmp_path / "nodes" / "checkpoints" / "stage-2-tune" / "trained.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "stage-2-tune" / "trained.safetensors")
    assert set(a) == set(b) and any("lora_A" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (tmp_path / "killed" / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "event" not in r] == list(range(1, 21))  # no step logged twice


@pytest.mark.parametrize("stage_done", [False, True])
def test_a_deepspeed_run_resumes_only_from_a_stage_end(tmp_path: Path, tiny_plan: Any, stage_done: bool) -> None:
    """ZeRO partitions the optimiser state over the processes and it is not saved: inside a stage there is nothing to
    continue from, while a stage's end checkpoint needs none (the next stage starts a new optimiser)."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType
    from xmm.errors import CheckpointError
    from xmm.training.checkpointing import TrainerState
    from xmm.training.resume import find_resume_checkpoint

    plan = load_plan(tiny_plan(tmp_path, tmp_path / "llm"), base_dir=tmp_path)
    root = plan.output_path / "checkpoints"
    (root / "step-00000003").mkdir(parents=True)
    state = TrainerState(stage_name="align", step=3, global_step=3, stage_done=stage_done)
    (root / "step-00000003" / "trainer_state.json").write_text(state.to_json())
    (root / "latest").write_text("step-00000003\n")
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=1, is_main_process=True)
    if stage_done:
        assert find_resume_checkpoint(plan, accelerator).state.step == 3
    else:
        with pytest.raises(CheckpointError, match="continues only from a stage's end checkpoint"):
            find_resume_checkpoint(plan, accelerator)
