"""Measure an audio/speech encoder's throughput in seconds of audio per second (default: the torchcrepe encoder).

    python plugins/xmm-plugin-audio/scripts/encoder_throughput.py [--encoder torchcrepe|whisper-base|...] \
        [--seconds 2 10 30] [--batch 4] [--threads 1]

Encodes synthetic sounds of the given lengths (after one warm-up call) and prints audio seconds per wall second and
per CPU second of this process (the latter is what to compare on a shared, busy machine; there, also set
OMP_WAIT_POLICY=PASSIVE, or spinning OpenMP threads waste most of the CPU).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def measure(encoder_name: str, lengths: list[float], batch: int, repeats: int, config: dict, bf16: bool = False) -> list[dict]:
    from xmm.registry import get_registry
    from xmm_plugin_audio.io import AudioClip
    from xmm_plugin_audio.synthetic import RATE, make_example

    enc = get_registry().create_encoder(encoder_name, **config)
    rng = np.random.default_rng(0)
    base = np.concatenate([make_example("contour", "rising", rng)[0] for _ in range(40)])
    enc.encode([AudioClip(base[:RATE], RATE)])  # warm-up
    rows = []
    for seconds in lengths:
        clips = [AudioClip(np.resize(base, round(seconds * RATE)), RATE) for _ in range(batch)]
        start, cpu0 = time.perf_counter(), time.process_time()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for _ in range(repeats):
                out = enc.encode(clips)
        wall = (time.perf_counter() - start) / repeats
        cpu = (time.process_time() - cpu0) / repeats
        rows.append({"encoder": enc.id, "seconds": seconds, "batch": batch, "tokens": int(out.mask[0].sum()),
                     "threads": torch.get_num_threads(), "bf16": bf16, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                     "audio_s_per_wall_s": round(seconds * batch / wall, 1), "audio_s_per_cpu_s": round(seconds * batch / cpu, 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", default="torchcrepe")
    ap.add_argument("--config", default="{}", help="encoder config as JSON")
    ap.add_argument("--seconds", type=float, nargs="+", default=[2.0, 10.0, 30.0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", action="store_true", help="run under bf16 autocast, as MultimodalLM does on CPUs with bf16")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for row in measure(args.encoder, args.seconds, args.batch, args.repeats, json.loads(args.config), args.bf16):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
