"""Bridges against their reference implementations: training-step time (forward + backward) on the CPU.

* Q-Former at BLIP-2's size (12 layers, width 768, 32 queries, encoder width 1408, 257 encoder tokens, batch 8) against
  transformers' ``Blip2QFormerModel`` wrapped with what BLIP-2 puts around it (the trainable ``ln_vision`` on the frozen
  encoder features, the query tokens, the language projection), so both sides compute the same function; the weights
  are copied so the outputs agree (reported as ``max_abs_diff``).
* Perceiver resampler at Flamingo's size (dim 1024, depth 6, 8 heads of 64, 64 latents; 257 media tokens, batch 8)
  against ``flamingo_pytorch.PerceiverResampler``, weights copied likewise.

Each measurement alternates reference and xmm steps in one process (so background load hits both alike) and reports
the median step time, ``speedup = reference_time / xmm_time``, the FLOPs of one step (counted by
``torch.utils.flop_counter``; xmm's are fewer: it skips the input-gradient matmuls of the frozen media) and the achieved
GFLOP/s against this machine's measured 2048^2 matmul GFLOP/s in the same dtype and thread count. Dropout is off on both
sides (BLIP-2 trains with 0.1; dropout's cost is the same for both). With ``--threads 1`` the clock is the thread's CPU
time, so a machine shared with other jobs still gives stable ratios; otherwise it is the wall clock.

    python benchmarks/bridges.py --json            # full run, a few minutes
    python benchmarks/bridges.py --quick           # smaller batch, fewer repeats: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Best-of-``repeats`` GFLOP/s of an ``n x n`` matmul (the machine's practical peak in this dtype)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    now = clock()
    for _ in range(repeats):
        t = now()
        a @ b
        best = min(best, now() - t)
    return 2 * n**3 / best / 1e9


def step_flops(step: Callable[[], None]) -> int:
    """Matmul FLOPs of one step; attention runs in its math form here, so that the counter sees its matmuls too."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        step()
    return counter.get_total_flops()


def clock() -> Callable[[], float]:
    """Wall clock; with one intra-op thread, this thread's CPU time, which other processes' load does not inflate."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def compare(ref_step: Callable[[], None], our_step: Callable[[], None], repeats: int, bf16: bool) -> dict:
    """Alternate the two steps (after a warm-up each), median times, FLOPs and throughput."""
    with autocast(bf16):
        ref_step()
        our_step()
        ref_times, our_times = [], []
        now = clock()
        for i in range(repeats):
            order = (ref_step, our_step) if i % 2 == 0 else (our_step, ref_step)  # neither always goes first
            for fn in order:
                t = now()
                fn()
                (ref_times if fn is ref_step else our_times).append(now() - t)
        ref_flops, our_flops = step_flops(ref_step), step_flops(our_step)
    ref_t, our_t = statistics.median(ref_times), statistics.median(our_times)
    return {
        "reference_s": round(ref_t, 4),
        "xmm_s": round(our_t, 4),
        "speedup": round(ref_t / our_t, 3),
        "reference_times_s": [round(t, 3) for t in ref_times],
        "xmm_times_s": [round(t, 3) for t in our_times],
        "reference_gflop": round(ref_flops / 1e9, 2),
        "xmm_gflop": round(our_flops / 1e9, 2),
        "reference_gflops": round(ref_flops / ref_t / 1e9, 1),
        "xmm_gflops": round(our_flops / our_t / 1e9, 1),
        # the work the step stands for, at the reference's FLOP count, per second of our step
        "xmm_effective_gflops": round(ref_flops / our_t / 1e9, 1),
    }


def make_step(module: nn.Module, inputs: Callable[[], torch.Tensor], read: Callable[[object], torch.Tensor]):
    def step() -> None:
        module.zero_grad(set_to_none=True)
        out = read(module(inputs()))
        out.float().mean().backward()

    return step


# -- Q-Former ----------------------------------------------------------------------------------------------------------
class Blip2XInterface(nn.Module):
    """BLIP-2's Q-Former path around transformers' ``Blip2QFormerModel``: ln_vision, query tokens, Q-Former, projection."""

    def __init__(self, qformer_config, num_queries: int, out_dim: int) -> None:
        super().__init__()
        from transformers import Blip2QFormerModel

        self.ln_vision = nn.LayerNorm(qformer_config.encoder_hidden_size)
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, qformer_config.hidden_size) * 0.02)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.language_projection = nn.Linear(qformer_config.hidden_size, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.expand(features.shape[0], -1, -1)
        h = self.qformer(query_embeds=q, encoder_hidden_states=self.ln_vision(features)).last_hidden_state
        return self.language_projection(h)


def bench_qformer(args: argparse.Namespace) -> dict:
    from transformers import Blip2QFormerConfig
    from xmm.bridges.qformer import QFormerBridge

    torch.manual_seed(0)
    qcfg = Blip2QFormerConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, encoder_hidden_size=1408,
        cross_attention_frequency=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    qcfg._attn_implementation = "sdpa"  # transformers' fastest path for the Q-Former on CPU
    ref = Blip2XInterface(qcfg, num_queries=32, out_dim=args.llm_dim).train()
    ours = QFormerBridge.from_config({
        "type": "qformer", "input_dim": 1408, "output_dim": args.llm_dim, "num_queries": 32, "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }).train()
    ours.load_blip2_qformer_state_dict(ref.qformer.state_dict())
    with torch.no_grad():
        ours.queries["default"].copy_(ref.query_tokens[0])
        ours.encoder_norm.load_state_dict(ref.ln_vision.state_dict())
        ours.proj.load_state_dict(ref.language_projection.state_dict())
    features = torch.randn(args.batch, 257, 1408)  # frozen encoder output: no gradient
    with torch.no_grad():
        diff = (ref(features) - ours(features).embeds).abs().max().item()
    result = {"config": "12 layers, 768 hidden, 12 heads, 32 queries, encoder 1408 x 257 tokens", "batch": args.batch,
              "llm_dim": args.llm_dim, "max_abs_diff": diff, "reference": "transformers Blip2QFormerModel (sdpa)"}
    for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
        ref_step = make_step(ref, lambda: features, lambda o: o)
        our_step = make_step(ours, lambda: features, lambda o: o.embeds)
        result[name] = compare(ref_step, our_step, args.repeats, bf16)
        log(f"qformer {name}: {result[name]['reference_s']} s vs {result[name]['xmm_s']} s -> x{result[name]['speedup']}")
    return result


# -- perceiver ---------------------------------------------------------------------------------------------------------
def bench_perceiver(args: argparse.Namespace) -> dict:
    from flamingo_pytorch import PerceiverResampler
    from xmm.bridges.perceiver import PerceiverBridge

    torch.manual_seed(0)
    ref = PerceiverResampler(dim=1024, depth=6, dim_head=64, heads=8, num_latents=64, num_media_embeds=4).train()
    ours = PerceiverBridge.from_config({
        "type": "perceiver", "input_dim": 1024, "output_dim": 1024, "depth": 6, "heads": 8, "dim_head": 64,
        "num_latents": 64, "max_media": 4,
    }).train()
    ours.load_flamingo_pytorch_state_dict(ref.state_dict())
    media = torch.randn(args.batch, 257, 1024)
    with torch.no_grad():
        diff = (ref(media)[:, 0] - ours(media).embeds).abs().max().item()
    result = {"config": "dim 1024, depth 6, 8 heads x 64, 64 latents, 257 media tokens", "batch": args.batch,
              "max_abs_diff": diff, "reference": "flamingo_pytorch PerceiverResampler"}
    for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
        ref_step = make_step(ref, lambda: media, lambda o: o)
        our_step = make_step(ours, lambda: media, lambda o: o.embeds)
        result[name] = compare(ref_step, our_step, args.repeats, bf16)
        log(f"perceiver {name}: {result[name]['reference_s']} s vs {result[name]['xmm_s']} s -> x{result[name]['speedup']}")
    return result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per side and dtype (default 7; --quick 2)")
    p.add_argument("--quick", action="store_true", help="batch 2 and 2 repeats: a smoke test, not a measurement")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8)")
    p.add_argument("--llm-dim", type=int, default=2560, help="adapter output width (BLIP-2 OPT-2.7B: 2560)")
    p.add_argument("--only", choices=["qformer", "perceiver"], help="run one of the two")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (2 if args.quick else 7)
    args.batch = args.batch or (2 if args.quick else 8)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "clock": "thread CPU time" if torch.get_num_threads() == 1 else "wall clock",
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": args.quick,
        "repeats": args.repeats,
    }
    report["machine"]["matmul_gflops_fp32"] = round(matmul_gflops(torch.float32), 1)
    report["machine"]["matmul_gflops_bf16"] = round(matmul_gflops(torch.bfloat16), 1)
    log(f"matmul peak: fp32 {report['machine']['matmul_gflops_fp32']} GFLOP/s, bf16 {report['machine']['matmul_gflops_bf16']}")
    if args.only in (None, "qformer"):
        report["qformer"] = bench_qformer(args)
    if args.only in (None, "perceiver"):
        report["perceiver"] = bench_perceiver(args)
    for key in ("qformer", "perceiver"):
        for dtype, peak in (("fp32", "matmul_gflops_fp32"), ("bf16_autocast", "matmul_gflops_bf16")):
            if key in report:
                r = report[key][dtype]
                r["xmm_fraction_of_peak"] = round(r["xmm_gflops"] / report["machine"][peak], 3)
                r["reference_fraction_of_peak"] = round(r["reference_gflops"] / report["machine"][peak], 3)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key in ("qformer", "perceiver"):
            if key in report:
                for dtype in ("fp32", "bf16_autocast"):
                    r = report[key][dtype]
                    print(f"{key:9s} {dtype:13s} reference {r['reference_s']:.3f} s  xmm {r['xmm_s']:.3f} s  "
                          f"speedup x{r['speedup']:.2f}  xmm {r['xmm_gflops']} GFLOP/s ({r['xmm_fraction_of_peak']:.0%} of peak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
