"""Hostile-input figures (issue 17): peak memory of the worst images under the default limits, and the time to refuse
a 4 GiB file.

Images: each crafted image (the largest pixel count the default ``max_pixels`` allows, in the modes that cost the
most to convert: float and 32-bit integer TIFF, 16-bit PNG, RGBA / LA / palette-with-transparency PNG, CMYK JPEG,
plus the extreme aspect ratios 100000x1 and 1200000x100) is loaded by the image modality's loader and preprocessed by
its default encoder (EfficientNet-Lite0, 224 px), each in a fresh process; reported: peak RSS (``VmHWM``) minus the
RSS after imports, and seconds. The files are small (uniform pixels compress well): the size limit does not stop them.

4 GiB: a sparse 4 GiB file handed to every modality's loader (``MediaItem.load``, as chat and training do), to
``xmm chat``'s media check and to a training manifest line naming it; median of 5, milliseconds.

Usage: ``python benchmarks/hostile_input.py [--dir /tmp/xmm-hostile-bench] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

W, H = 10_000, 12_000  # 120,000,000 pixels: the default max_pixels

IMAGES = {
    "float32 TIFF 10000x12000": ("F", "f.tif", {"compression": "tiff_deflate"}, 0.5),
    "int32 TIFF 10000x12000": ("I", "i32.tif", {"compression": "tiff_deflate"}, 70_000),
    "16-bit PNG 10000x12000": ("I;16", "i16.png", {}, 1000),
    "RGBA PNG 10000x12000": ("RGBA", "rgba.png", {}, (10, 20, 30, 128)),
    "LA PNG 10000x12000": ("LA", "la.png", {}, (100, 100)),
    "palette+transparency PNG 10000x12000": ("P", "pal.png", {"transparency": 1}, 1),
    "CMYK JPEG 10000x12000": ("CMYK", "cmyk.jpg", {"quality": 10}, (1, 2, 3, 4)),
    "RGB PNG 100000x1": ("RGB", "wide.png", {}, (1, 2, 3)),
    "RGB PNG 1200000x100": ("RGB", "wide2.png", {}, (1, 2, 3)),
}

_MEASURE = """
import json, sys, time
from xmm.registry import get_registry
from xmm.model.messages import MediaItem
reg = get_registry()
spec = reg.modalities["image"]
enc = reg.create_encoder(spec.encoder, **(spec.encoder_config or {}))
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
base = rss("VmRSS:")
t = time.perf_counter()
try:
    img = MediaItem("image", sys.argv[1], spec).load()
    enc.preprocess(img)
    outcome = f"ok {img.size[0]}x{img.size[1]}"
except Exception as e:
    outcome = f"{type(e).__name__}: {e}"[:200]
print(json.dumps({"peak_over_base_mb": (rss("VmHWM:") - base) / 2**20, "seconds": time.perf_counter() - t,
                  "outcome": outcome}))
"""

_REJECT = """
import json, statistics, sys, time
from xmm.registry import get_registry
from xmm.model.messages import MediaItem
from xmm.errors import XmmError
reg = get_registry()
path = sys.argv[1]
out = {}
for m in ("image", "audio", "speech", "video", "device"):
    spec, times, msg = reg.modalities[m], [], ""
    for _ in range(5):
        t = time.perf_counter()
        try:
            MediaItem(m, path, spec).load()
        except XmmError as e:
            msg = str(e)[-90:]
        times.append(time.perf_counter() - t)
    out[f"loader:{m}"] = {"ms": statistics.median(times) * 1e3, "message": msg}
from xmm.cli.chat import check_media_file
times = []
for _ in range(5):
    t = time.perf_counter()
    try:
        check_media_file("image", path)
    except XmmError as e:
        msg = str(e)[-90:]
    times.append(time.perf_counter() - t)
out["xmm chat --image"] = {"ms": statistics.median(times) * 1e3, "message": msg}
from xmm.data import open_dataset
times = []
for _ in range(5):
    t = time.perf_counter()
    bad = open_dataset(sys.argv[2], reg.modalities)[0]
    times.append(time.perf_counter() - t)
out["training manifest line"] = {"ms": statistics.median(times) * 1e3, "message": str(bad)[-90:]}
print(json.dumps(out))
"""


def make_images(folder: Path) -> dict[str, Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (mode, fname, save, fill) in IMAGES.items():
        path = folder / fname
        if not path.exists():
            size = (100_000, 1) if fname == "wide.png" else (1_200_000, 100) if fname == "wide2.png" else (W, H)
            Image.new(mode, size, fill).save(path, **save)
        out[name] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/xmm-hostile-bench"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "XMM_NO_PROGRESS": "1"}
    results: dict[str, object] = {"loadavg": os.getloadavg()}
    images = {}
    for name, path in make_images(args.dir / "images").items():
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, env=env)
        images[name] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-500:]}
        if not args.json:
            r = images[name]
            print(f"{name:40s} +{r.get('peak_over_base_mb', 0):7.0f} MB  {r.get('seconds', 0):6.1f} s  {r.get('outcome', r)}")
    results["images"] = images
    sparse = args.dir / "sparse-4GiB.bin"
    with open(sparse, "wb") as f:
        f.truncate(4 << 30)
    manifest = args.dir / "train.jsonl"
    manifest.write_text(json.dumps({"messages": [{"role": "user", "content": [{"type": "image", "path": sparse.name}]},
                                                 {"role": "assistant", "content": "x"}]}) + "\n")
    proc = subprocess.run([sys.executable, "-c", _REJECT, str(sparse), str(manifest)], capture_output=True, text=True,
                          env=env)
    results["reject_4GiB"] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else proc.stderr[-2000:]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for where, r in results["reject_4GiB"].items():  # type: ignore[union-attr]
            print(f"4 GiB file, {where:24s} {r['ms']:8.2f} ms  ...{r['message']}")
        print(f"load average {results['loadavg']}")


if __name__ == "__main__":
    main()
