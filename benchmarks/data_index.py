"""Data benchmark: how long a 1,000,000-example dataset takes to give its first training batch, and at what memory.

Generates (once, under ``--dir``) a 1M-line xmm JSONL manifest and the same examples as one LLaVA JSON array, each
example an image of a pool of 64 real PNGs plus a question and an answer. Then, each in a fresh process so that
time and RSS are its own:

- ``jsonl-cold`` / ``jsonl-warm``: open the manifest with :mod:`xmm.data` (cold: the index is built; warm: it is
  memory-mapped from ``$XMM_HOME/data-index``), draw the first shuffled batch of 16 with the trainer's sampler
  (``EpochBatchSampler``: a permutation of all 1M indices) and collate it with the real collator (SmolLM2's
  tokenizer with the placeholder tokens; the installed image plugin decodes the images).
- ``llava-cold`` / ``llava-warm``: the same for the JSON array (element boundaries indexed).
- ``eager-read_manifest``: ``xmm.training.data.read_manifest`` (every record parsed and checked up front, as training
  did before it read lazily, and as evaluation still does) on the first ``--old`` lines; scale by 1M / ``--old``.

Reported per run: seconds from process start to the first batch (``total_s``), of which ``imports_s`` (torch,
transformers and xmm, which training imports anyway), ``open_s`` (index), ``sampler_s``, ``batch_s``; peak RSS
(``VmHWM``) and RSS after imports. Goal: first batch <= 10 s and <= 500 MB RSS. Figures depend on the machine and
on how loaded it is: the script prints ``os.getloadavg()`` with them.

With ``--trainer``: ``xmm train`` itself (SmolLM2, the image plugin's encoder, an MLP bridge, one step of batch 4,
no feature cache) on the 1M-line manifest and on its first 1,000 lines, each in a fresh process: wall seconds and peak
RSS of the whole run. The difference is what the million records cost the trainer.

Usage: ``python benchmarks/data_index.py [--dir /tmp/xmm-data-bench] [--n 1000000] [--old 100000] [--trainer]
[--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()


def _status(key: str) -> float:
    """A VmXXX line of /proc/self/status in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def generate(folder: Path, n: int) -> None:
    """The manifest, the LLaVA array and the image pool (skipped when already there with the same n)."""
    stamp = folder / f".done-{n}"
    if stamp.exists():
        return
    from PIL import Image

    (folder / "img").mkdir(parents=True, exist_ok=True)
    for k in range(64):
        Image.new("RGB", (32, 32), (k * 4, 255 - k * 4, (k * 37) % 256)).save(folder / "img" / f"{k}.png")
    questions = ["What colour is the square?", "Is it red?", "Describe the picture in a few words.", "What is it?"]
    with open(folder / "train.jsonl", "w") as jl, open(folder / "llava.json", "w") as la:
        la.write("[\n")
        for start in range(0, n, 50_000):
            lines, elems = [], []
            for i in range(start, min(n, start + 50_000)):
                q, img, a = questions[i % 4], f"img/{i % 64}.png", f"answer {i % 97}"
                lines.append(json.dumps({"messages": [
                    {"role": "user", "content": [{"type": "image", "path": img}, {"type": "text", "text": q}]},
                    {"role": "assistant", "content": [{"type": "text", "text": a}]}], "meta": {"i": i}}))
                elems.append(json.dumps({"id": str(i), "image": img, "conversations": [
                    {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}))
            jl.write("\n".join(lines) + "\n")
            la.write(("" if start == 0 else ",\n") + ",\n".join(elems))
        la.write("\n]\n")
    stamp.write_text("ok")


def child(kind: str, folder: Path, old: int) -> dict[str, float | str]:
    """One measured run (in its own process)."""
    import torch  # noqa: F401 - training has these loaded before its data: count them as imports
    import transformers  # noqa: F401
    from xmm.data import open_dataset
    from xmm.data.check import placeholder_tokenizer
    from xmm.model.collator import MultimodalCollator
    from xmm.registry import get_registry
    from xmm.training.data import BadSamples, EpochBatchSampler, read_manifest

    specs = {"image": get_registry().modality("image")}
    tok = placeholder_tokenizer(None, specs)
    t_imports = time.perf_counter()
    rss_imports = _status("VmRSS")
    if kind == "eager-read_manifest":
        head = folder / f"head-{old}.jsonl"
        if not head.exists():
            with open(folder / "train.jsonl") as src, open(head, "w") as dst:
                for _ in range(old):
                    dst.write(src.readline())
        t1 = time.perf_counter()
        examples = read_manifest(head, specs, BadSamples())
        t2 = time.perf_counter()
        return {"kind": kind, "records": len(examples), "imports_s": t_imports - T0, "open_s": t2 - t1,
                "rss_after_imports_mb": rss_imports, "peak_rss_mb": _status("VmHWM")}
    path = {"jsonl": folder / "train.jsonl", "llava": folder / "llava.json"}[kind.split("-")[0]]
    t1 = time.perf_counter()
    ds = open_dataset(path, specs)
    n = len(ds)
    t2 = time.perf_counter()
    sampler = EpochBatchSampler(n, 16, seed=0)
    first = next(iter(sampler))
    t3 = time.perf_counter()
    batch = MultimodalCollator(tok, specs, load_media=True)([ds[i] for i in first])
    t4 = time.perf_counter()
    return {"kind": kind, "records": n, "batch_shape": str(tuple(batch.input_ids.shape)),
            "total_s": t4 - T0, "imports_s": t_imports - T0, "open_s": t2 - t1, "sampler_s": t3 - t2,
            "batch_s": t4 - t3, "rss_after_imports_mb": rss_imports, "peak_rss_mb": _status("VmHWM"),
            "rss_after_batch_mb": _status("VmRSS")}


def trainer_runs(folder: Path, env: dict[str, str]) -> list[dict[str, float | str]]:
    """``xmm train`` for one step on the 1M manifest and on its first 1,000 lines (each its own process)."""
    import yaml

    head = folder / "head-1000.jsonl"
    if not head.exists():
        with open(folder / "train.jsonl") as src, open(head, "w") as dst:
            for _ in range(1000):
                dst.write(src.readline())
    out = []
    for manifest in ("head-1000.jsonl", "train.jsonl"):
        plan = {"model": {"llm": "smollm2", "modalities": {"image": {"bridge": {"type": "mlp"}}}},
                "output_dir": f"run-{manifest.split('.')[0]}", "seed": 0,
                "stages": [{"name": "align", "trainable": ["bridge:image"], "data": {"train": manifest},
                            "max_steps": 1, "batch_size": 4, "feature_cache": False}]}
        (folder / "plan.yaml").write_text(yaml.safe_dump(plan))
        # the run's own peak RSS, printed by the child at exit
        code = ("import atexit, sys; from xmm.cli.main import main; atexit.register(lambda: sys.stderr.write("
                "'VMHWM ' + [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0])); "
                f"main(['train', {str(folder / 'plan.yaml')!r}])")
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode:
            raise RuntimeError(f"xmm train failed: {done.stderr[-2000:]}")
        peak = next(int(line.split()[2]) for line in done.stderr.splitlines() if line.startswith("VMHWM"))
        out.append({"kind": f"xmm train ({manifest})", "total_s": wall, "peak_rss_mb": peak / 1024})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/xmm-data-bench"))
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--old", type=int, default=100_000, help="lines read by the eager read_manifest (0: skip)")
    ap.add_argument("--trainer", action="store_true", help="also time `xmm train` on 1M lines against 1,000")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.old)))
        return
    t = time.perf_counter()
    generate(args.dir, args.n)
    gen_s = time.perf_counter() - t
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from xmm.data.cache import index_folder, index_key

    folder = index_folder()
    for name, kind in (("train.jsonl", "lines"), ("llava.json", "array")):
        if folder is not None:  # the cold runs build their index (the converted SmolLM2 in $XMM_HOME stays)
            (folder / f"{index_key(args.dir / name, kind)}.npy").unlink(missing_ok=True)
    runs = []
    kinds = ["jsonl-cold", "jsonl-warm", "llava-cold", "llava-warm"] + (["eager-read_manifest"] if args.old else [])
    for kind in kinds:
        out = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--n", str(args.n), "--old",
                              str(args.old), "--child", kind], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.trainer:
        runs += trainer_runs(args.dir, env)
    result = {"n": args.n, "generate_s": gen_s, "loadavg": os.getloadavg(), "cpus": os.cpu_count(),
              "manifest_mb": (args.dir / "train.jsonl").stat().st_size / 2**20,
              "llava_mb": (args.dir / "llava.json").stat().st_size / 2**20, "runs": runs}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.n:,} examples: manifest {result['manifest_mb']:.0f} MB, LLaVA array {result['llava_mb']:.0f} MB; "
          f"load average {result['loadavg'][0]:.1f} on {result['cpus']} CPUs")
    for r in runs:
        if r["kind"].startswith("xmm train"):
            print(f"  {r['kind']:<32} {r['total_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
            continue
        if r["kind"] == "eager-read_manifest":
            print(f"  {r['kind']:<18} {r['records']:,} lines in {r['open_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(after imports {r['rss_after_imports_mb']:.0f} MB)")
            continue
        print(f"  {r['kind']:<18} first batch {r['total_s']:.2f} s after start (imports {r['imports_s']:.2f}, index "
              f"{r['open_s']:.2f}, sampler {r['sampler_s']:.2f}, batch {r['batch_s']:.2f}); peak RSS "
              f"{r['peak_rss_mb']:.0f} MB (after imports {r['rss_after_imports_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
