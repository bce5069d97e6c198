"""Throughput of the default image encoder (EfficientNet-Lite0, 224 px) on this machine: images/s in fp32 and under
bf16 autocast, at batch 16 and 32, for the encoder's forward alone and for load + preprocess + forward.

    .venv/bin/python plugins/xmm-plugin-image/scripts/bench_image_encoder.py [--batches 3] [--json]

A measurement script, not a test: run it once when you need the figures (it keeps both CPU cores busy for ~1 min).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches per setting (after one warm-up batch)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()

    from xmm_plugin_image.encoders import create_image_encoder
    from xmm_plugin_image.loading import load_image

    enc = create_image_encoder("efficientnet-lite0")
    photos = _photos()
    results = []
    for batch_size in (16, 32):
        raw = [photos[i % len(photos)] for i in range(batch_size)]
        t0 = time.perf_counter()
        batch = enc.collate([enc.preprocess(load_image(x)) for x in raw])
        prep_s = time.perf_counter() - t0
        for precision in ("fp32", "bf16-autocast"):
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else torch.autocast("cpu", enabled=False)
            with torch.inference_mode(), ctx:
                enc(**batch)  # warm-up (oneDNN picks its kernels on the first call)
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(args.batches):
                    out = enc(**batch)
                fwd_s = (time.perf_counter() - t0) / args.batches
                cpu_s = (time.process_time() - c0) / args.batches
            results.append({
                "batch": batch_size,
                "precision": precision,
                "forward_images_per_s": round(batch_size / fwd_s, 1),
                # on a shared machine wall time includes other processes' turns; CPU time does not
                "forward_images_per_cpu_s": round(batch_size / cpu_s, 1),
                "end_to_end_images_per_s": round(batch_size / (fwd_s + prep_s), 1),
                "preprocess_ms_per_image": round(1000 * prep_s / batch_size, 2),
                "features": list(out.features.shape),
            })
    report = {
        "load_average_1min": round(os.getloadavg()[0], 2),
        "encoder": enc.id,
        "revision": enc.revision[:16],
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{enc.id} ({report['revision']}), {report['torch_threads']} torch threads, "
          f"load average {report['load_average_1min']} on {os.cpu_count()} CPUs")
    for r in results:
        print(f"  batch {r['batch']:>2} {r['precision']:<13} forward {r['forward_images_per_s']:>6} img/s "
              f"({r['forward_images_per_cpu_s']} img per CPU-s)   "
              f"load+preprocess+forward {r['end_to_end_images_per_s']:>6} img/s   "
              f"(preprocess {r['preprocess_ms_per_image']} ms/img)")


if __name__ == "__main__":
    main()
