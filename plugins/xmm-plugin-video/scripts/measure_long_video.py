"""Peak memory and time of sampling 8 frames from a long video, and the video encoder's frames/s, on this machine.

Writes a long low-resolution MP4 with PyAV into a temp dir (default 12 minutes, 160x120, 25 fps, a keyframe every
10 s as x264's default), then samples 8 frames in fresh subprocesses - with seeking (the default) and with one
sequential pass - and reports each one's peak RSS next to the file size and the size of the whole video decoded.
Then it times the ``video-frames`` encoder (EfficientNet-Lite0 per frame) on 8-frame clips.

    .venv/bin/python plugins/xmm-plugin-video/scripts/measure_long_video.py [--minutes 12] [--json]

A measurement script, not a test (it takes a minute or two of CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from xmm_plugin_video.decoding import VideoDecodeConfig, load_video
mode, path = sys.argv[1], sys.argv[2]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
clip = None
if mode == "baseline":  # imports, open the container, read the stream's header: everything but decoding
    import av
    with av.open(path) as c:
        _ = (c.streams.video[0].frames, c.duration, len(c.streams.video[0].index_entries))
else:
    clip = load_video(path, VideoDecodeConfig(num_frames=8, seek=(mode == "seek")))
elapsed = time.perf_counter() - t0
print(json.dumps({"mode": mode, "seconds": round(elapsed, 2), "rss_before_mb": round(base / 1024, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "decoded_frames": clip.decoded_frames if clip else 0, "seeks": clip.seeks if clip else 0,
                  "timestamps": [round(t, 1) for t in clip.timestamps] if clip else []}))
"""


def make_long_video(path: Path, minutes: float, width: int, height: int, fps: int) -> tuple[int, float]:
    """A moving gradient with a frame counter bar; returns (frames, seconds it took to encode)."""
    from xmm_plugin_video.writing import write_video

    n = int(minutes * 60 * fps)
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]

    def frames():
        for i in range(n):
            r = (xs + i) % 256 + 0 * ys
            g = (ys + 2 * i) % 256 + 0 * xs
            b = np.full_like(r, (i // fps) % 256)
            frame = np.stack([r, g, b], axis=-1).astype(np.uint8)
            frame[-8:, : int(width * (i / n))] = 255  # progress bar
            yield frame

    t0 = time.perf_counter()
    write_video(path, frames(), fps=fps, preset="ultrafast", crf=28)
    return n, time.perf_counter() - t0


def sample_in_subprocess(mode: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def encoder_throughput(path: Path, clips: int = 4) -> dict:
    import torch
    from xmm.registry import get_registry
    from xmm_plugin_video.decoding import VideoDecodeConfig, load_video

    reg = get_registry()
    enc = reg.create_encoder("video-frames", frame_cache_size=0)
    clip_list = [load_video(path, VideoDecodeConfig(num_frames=8, start=60.0 * i)) for i in range(clips)]
    out = {}
    for precision in ("fp32", "bf16-autocast"):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision != "fp32" else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), ctx:
            enc.encode(clip_list[:1])  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            feats = enc.encode(clip_list)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        # on a shared machine wall time includes other processes' turns; CPU time does not
        out[precision] = {"frames_per_s": round(8 * clips / elapsed, 1), "frames_per_cpu_s": round(8 * clips / cpu, 1),
                          "clips_per_s": round(clips / elapsed, 2), "features": list(feats.features.shape)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--keep", type=Path, default=None, help="write the video here instead of a temp dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "long.mp4"
        if path.exists():
            import av

            with av.open(str(path)) as c:
                n_frames, write_s = c.streams.video[0].frames, 0.0
        else:
            n_frames, write_s = make_long_video(path, args.minutes, args.width, args.height, args.fps)
        report = {
            "video": {"minutes": args.minutes, "size": f"{args.width}x{args.height}", "fps": args.fps, "frames": n_frames,
                      "file_mb": round(path.stat().st_size / 2**20, 2),
                      "decoded_rgb_mb": round(n_frames * args.width * args.height * 3 / 2**20, 1),
                      "write_seconds": round(write_s, 1)},
            "sampling_8_frames": [sample_in_subprocess(m, path) for m in ("baseline", "seek", "sequential")],
            "video_encoder": encoder_throughput(path),
            "this_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    v = report["video"]
    print(f"video: {v['minutes']} min {v['size']} @ {v['fps']} fps = {v['frames']} frames, file {v['file_mb']} MB, "
          f"all frames decoded as RGB {v['decoded_rgb_mb']} MB (written in {v['write_seconds']} s)")
    for r in report["sampling_8_frames"]:
        print(f"  {r['mode']:<10} peak RSS {r['peak_rss_mb']:>7} MB  time {r['seconds']:>6} s  "
              f"decoded {r['decoded_frames']:>6} frames  seeks {r['seeks']}")
    for precision, r in report["video_encoder"].items():
        print(f"  video-frames encoder {precision:<13} {r['frames_per_s']} frames/s ({r['frames_per_cpu_s']} per CPU-s, "
              f"{r['clips_per_s']} 8-frame clips/s)")
    print(f"  (load average {report['load_average_1min']} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
