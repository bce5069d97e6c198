"""Fuzz harness of issue 17: hostile files, prompts, checkpoints and run folders through xmm's loaders and commands,
each in a worker process under a memory limit and a timeout.

A *probe* is a dict: ``{"id", "group", "kind": "load" | "cli", ...}``. ``load`` probes hand a path (or the bytes of a
file) to a modality's loader exactly as a chat or training example does (``MediaItem.load``); ``cli`` probes run
``xmm ARGV`` in the worker (stdin, environment and working folder given). The worker records, per probe, how it ended
(``ok`` / ``error``: a typed xmm error or a clean exit / ``traceback``: anything else escaping / ``memory``:
MemoryError under the limit), how long it took, every file it opened under a *forbidden* folder (a Python audit hook:
the "outside reads") and every process it tried to start (the "code executions", with marker files the hostile
inputs would create). The parent restarts a worker that dies (``kill``) or stops answering (``hang``) and goes on with
the next probe. :func:`table` sums the results per group.

Run as a script (``python xmm_fuzz_harness.py worker PROBES.json RESULTS.jsonl``) it is the worker.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CANARY = "CANARY-1f7c-do-not-echo"  # content of files a hostile input points at; must never reach any output
EXEC_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
               "pty.spawn")
OUTCOMES = ("ok", "error", "traceback", "memory", "kill", "hang")


# -- corpus ---------------------------------------------------------------------------------------------------------
DEVICE_SNAPSHOT = {"timestamp": 1732399606.0, "battery": {"level": 20.0, "charging": False}, "temperature": 45.1,
                   "cpu_load": 89, "memory_load": 33, "storage": {"used": 48.6, "total": 64.0},
                   "network": {"type": "wifi", "signal": 92}, "screen": {"on": True, "brightness": 98}, "volume": 70,
                   "location_permission": "granted", "foreground_app": "music"}


def seed_png(path: Path) -> Path:
    from PIL import Image

    img = Image.new("RGB", (32, 24), (200, 30, 30))
    img.paste((20, 40, 220), (8, 6, 24, 18))
    img.save(path)
    return path


def seed_jpeg(path: Path) -> Path:
    from PIL import Image

    img = Image.new("RGB", (32, 24), (30, 200, 30))
    img.paste((220, 220, 20), (4, 4, 20, 20))
    img.save(path, quality=90)
    return path


def seed_wav(path: Path, seconds: float = 0.5) -> Path:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="PCM_16")
    return path


def seed_mp4(path: Path, frames: int = 8) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(frames):
            arr = np.full((32, 32, 3), (i * 30) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def seed_json(path: Path) -> Path:
    path.write_text(json.dumps({"snapshots": [DEVICE_SNAPSHOT, {**DEVICE_SNAPSHOT, "timestamp": 1732399666.0}]}))
    return path


SEEDS = {"png": ("image", seed_png), "jpg": ("image", seed_jpeg), "wav": ("audio", seed_wav),
         "mp4": ("video", seed_mp4), "json": ("device", seed_json)}


def variants(data: bytes, rng: random.Random, *, truncations: int, flips: int, randoms: int) -> list[tuple[str, bytes]]:
    """Mutations of a valid file: truncations, bit flips (1-8 bits, in the first 256 bytes half the time: headers),
    random bytes of the same length and random bytes after the file's first 16 bytes (a valid magic number)."""
    out: list[tuple[str, bytes]] = []
    for i in range(truncations):
        cut = rng.randrange(0, len(data))
        out.append((f"trunc{i}-{cut}", data[:cut]))
    for i in range(flips):
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(0, min(len(b), 256)) if rng.random() < 0.5 else rng.randrange(0, len(b))
            b[pos] ^= 1 << rng.randrange(8)
        out.append((f"flip{i}", bytes(b)))
    for i in range(randoms):
        n = rng.choice([1, 16, len(data), 4096])
        out.append((f"random{i}", rng.randbytes(n)))
        out.append((f"magic{i}", data[:16] + rng.randbytes(n)))
    return out


def png_chunks(width: int, height: int, *, bit_depth: int = 8, colour: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG with the given header; ``idat`` None compresses all-zero rows (every row while that stays under 64 MB of
    raw data, else one row: a tiny file claiming a huge image)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    row = 1 + width * 3 * max(1, bit_depth // 8)
    body = idat if idat is not None else zlib.compress(b"\x00" * (row * height if row * height <= 64 << 20 else row))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def wav_header(frames: int, *, rate: int = 16000, channels: int = 1, bits: int = 16, data: bytes = b"") -> bytes:
    """A WAV whose header claims ``frames`` frames (the data may be much shorter)."""
    block = channels * bits // 8
    size = frames * block
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    return (b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", size & 0xFFFFFFFF) + data)


def special_files(root: Path, outside: Path) -> dict[str, Path]:
    """Files that must be named, never opened: a FIFO, a folder, /dev/zero, a symlink loop, a missing file, an empty
    file, a 4 GiB sparse file, a socket-like special (a link to /dev/null), and a readable file outside ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    os.mkfifo(root / "fifo.bin")
    files["fifo"] = root / "fifo.bin"
    (root / "folder.bin").mkdir()
    files["directory"] = root / "folder.bin"
    (root / "zero.bin").symlink_to("/dev/zero")
    files["dev-zero"] = root / "zero.bin"
    (root / "null.bin").symlink_to("/dev/null")
    files["dev-null"] = root / "null.bin"
    (root / "loop-a.bin").symlink_to(root / "loop-b.bin")
    (root / "loop-b.bin").symlink_to(root / "loop-a.bin")
    files["symlink-loop"] = root / "loop-a.bin"
    files["missing"] = root / "missing.bin"
    (root / "empty.bin").write_bytes(b"")
    files["empty"] = root / "empty.bin"
    with open(root / "sparse-4g.bin", "wb") as f:
        f.truncate(4 << 30)
    files["sparse-4GiB"] = root / "sparse-4g.bin"
    (root / "canary.bin").write_text(CANARY + "\n" + "root:x:0:0:root:/root:/bin/bash\n")
    files["junk-text"] = root / "canary.bin"
    return files


def loader_probes(root: Path, *, seed: int = 17, truncations: int = 12, flips: int = 24, randoms: int = 3) -> list[dict[str, Any]]:
    """Load probes over every seed format and its variants, for every modality that reads it (audio files through
    ``audio`` and ``speech``), plus the special files for every modality and the crafted headers."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    outside = root.parent / f"{root.name}-outside"
    probes: list[dict[str, Any]] = []
    readers = {"image": ["image"], "audio": ["audio", "speech"], "video": ["video"], "device": ["device"]}
    for ext, (family, make) in SEEDS.items():
        seed_path = make(root / f"seed.{ext}")
        data = seed_path.read_bytes()
        cases = [("valid", data), *variants(data, rng, truncations=truncations, flips=flips, randoms=randoms)]
        for name, blob in cases:
            path = root / f"{ext}-{name}.{ext}"
            path.write_bytes(blob)
            for modality in readers[family]:
                probes.append({"id": f"load/{modality}/{ext}-{name}", "group": f"loader:{modality}", "kind": "load",
                               "modality": modality, "path": str(path)})
        # the same bytes handed over in memory (the server's and the API's path)
        probes.append({"id": f"load/{family}/{ext}-bytes-flip", "group": f"loader:{family}", "kind": "load",
                       "modality": readers[family][0], "path": str(root / f"{ext}-flip0.{ext}"), "as_bytes": True})
    crafted = {
        "image": {"png-100000x1": png_chunks(100_000, 1), "png-20000x1": png_chunks(20_000, 1),
                  "png-bomb-65535sq": png_chunks(65_535, 65_535), "png-16bit-1x1": png_chunks(1, 1, bit_depth=16),
                  "png-zero-size": png_chunks(0, 0), "png-huge-idat-claim": png_chunks(11_000, 11_000, idat=b"\x78\x9c")},
        "audio": {"wav-claims-10h": wav_header(16000 * 36000), "wav-claims-4G-frames": wav_header(0x7FFFFFFF),
                  "wav-rate-1hz": wav_header(100, rate=1, data=b"\x00\x01" * 100),
                  "wav-1000-channels": wav_header(1000, channels=1000, data=b"\x00" * 2000),
                  "wav-nan-float": wav_header(4, bits=32, data=struct.pack("<4f", float("nan"), 1, 1, 1))},
        "device": {"json-deep-200000": b"[" * 200_000 + b"]" * 200_000, "json-deep-unbalanced": b"{\"a\":" * 100_000,
                   "json-not-utf8": b"\xff\xfe{\"snapshots\": []}", "json-huge-number": b"{\"cpu_load\": 1" + b"0" * 5000 + b"}",
                   "json-nan": b"{\"cpu_load\": NaN, \"timestamp\": 1}", "jsonl-mixed": b"{}\n[1,2]\n\"x\"\n"},
    }
    for modality, blobs in crafted.items():
        for name, blob in blobs.items():
            path = root / name
            path.write_bytes(blob)
            for m in readers[modality]:
                probes.append({"id": f"load/{m}/{name}", "group": f"loader:{m}", "kind": "load", "modality": m,
                               "path": str(path)})
    specials = special_files(root / "special", outside)
    for modality in ("image", "audio", "speech", "video", "device"):
        for name, path in specials.items():
            probes.append({"id": f"load/{modality}/{name}", "group": f"loader:{modality}", "kind": "load",
                           "modality": modality, "path": str(path)})
    return probes


# -- running --------------------------------------------------------------------------------------------------------
def run_probes(probes: Sequence[dict[str, Any]], work: Path, *, memory_bytes: int = 3 << 30, timeout_s: float = 60.0,
               env: dict[str, str] | None = None, forbidden: Sequence[Path] = (), markers: Sequence[Path] = (),
               setup: str = "") -> list[dict[str, Any]]:
    """Run ``probes`` in worker processes; returns one result per probe (see the module docstring).

    ``memory_bytes``: address space a worker may add after its imports (``RLIMIT_AS``); ``timeout_s``: per probe.
    ``forbidden``: folders whose files must never be opened; ``markers``: files a hostile input would create.
    ``setup``: Python run by the worker once before the probes (imports to pay for once).
    """
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    todo = list(probes)
    round_ = 0
    while todo:
        round_ += 1
        spec = work / f"probes-{round_}.json"
        out = work / f"results-{round_}.jsonl"
        spec.write_text(json.dumps({"probes": todo, "memory_bytes": memory_bytes, "timeout_s": timeout_s,
                                    "forbidden": [str(f) for f in forbidden], "markers": [str(m) for m in markers],
                                    "setup": setup}))
        proc_env = {**os.environ, **(env or {})}
        proc_env["PYTHONPATH"] = os.pathsep.join([str(HERE), proc_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log = open(work / f"worker-{round_}.log", "wb")
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker", str(spec), str(out)],
                                env=proc_env, stdout=log, stderr=subprocess.STDOUT, cwd=str(work))
        killed = False
        last_size, last_change = -1, time.monotonic()
        while proc.poll() is None:
            time.sleep(0.2)
            size = out.stat().st_size if out.exists() else 0
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            # the worker's own alarm ends a stuck probe; this catches a worker stuck where signals cannot reach
            setup_allowance = 300 if size == 0 else 0
            if time.monotonic() - last_change > timeout_s + 30 + setup_allowance:
                proc.kill()
                proc.wait()
                killed = True
                break
        log.close()
        lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        started = [x["id"] for x in lines if x.get("event") == "start"]
        for x in lines:
            if x.get("event") == "end":
                results[x["id"]] = x
        unfinished = [p for p in started if p not in results]
        if unfinished:
            culprit = unfinished[-1]
            why = "hang" if killed else "kill"  # killed by us for not answering, or died (signal, OOM killer)
            results[culprit] = {"id": culprit, "outcome": why, "returncode": proc.returncode, "seconds": None,
                                "outside_opens": [], "execs": [], "message": (work / f"worker-{round_}.log").read_text(
                                    errors="replace")[-2000:]}
        elif proc.returncode not in (0, None) and not lines:
            raise RuntimeError(f"the fuzz worker failed before any probe: {(work / f'worker-{round_}.log').read_text()[-3000:]}")
        todo = [p for p in todo if p["id"] not in results]
    by_id = {p["id"]: p for p in probes}
    return [{**results[p["id"]], "group": by_id[p["id"]]["group"]} for p in probes]


def clean(result: dict[str, Any]) -> bool:
    """True for a probe that ended as it must: accepted, or a typed error (the one it ``expect`` s, naming what it
    must ``mention``); nothing opened outside, nothing started, no canary in any output."""
    return (result["outcome"] in ("ok", "error") and not result.get("outside_opens") and not result.get("execs")
            and not result.get("echo") and result.get("matched", True))


def table(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per group and in total: probes, clean, tracebacks, kills (incl. memory), hangs, outside reads, code
    executions, content echoes."""
    rows: dict[str, Counter[str]] = {}
    for r in results:
        for key in (r["group"], "TOTAL"):
            c = rows.setdefault(key, Counter())
            c["probes"] += 1
            c["clean"] += clean(r)
            c["tracebacks"] += r["outcome"] == "traceback"
            c["kills"] += r["outcome"] in ("kill", "memory")
            c["hangs"] += r["outcome"] == "hang"
            c["outside reads"] += bool(r.get("outside_opens"))
            c["code executions"] += bool(r.get("execs"))
            c["content echoes"] += bool(r.get("echo"))
    cols = ("probes", "clean", "tracebacks", "kills", "hangs", "outside reads", "code executions", "content echoes")
    order = sorted(k for k in rows if k != "TOTAL") + ["TOTAL"]
    return [{"group": k, **{c: rows[k][c] for c in cols}} for k in order]


def format_table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


# -- worker ---------------------------------------------------------------------------------------------------------
class _Buffer(io.BytesIO):
    """A capture buffer that outlives the text stream around it (a command may close its stdout)."""

    def close(self) -> None:
        pass


class _Hang(BaseException):
    """Raised by the per-probe alarm (a BaseException, so that no ``except Exception`` in xmm swallows it)."""


def _load_probe(probe: dict[str, Any]) -> tuple[str, str, str]:
    from xmm.errors import XmmError
    from xmm.model.messages import MediaItem
    from xmm.registry import get_registry

    spec = get_registry().modalities[probe["modality"]]
    source: Any = probe["path"]
    if probe.get("as_bytes"):
        source = Path(probe["path"]).read_bytes()
    try:
        MediaItem(probe["modality"], source, spec).load()
    except XmmError as e:
        return "error", type(e).__name__, str(e)
    return "ok", "", ""


def _cli_probe(probe: dict[str, Any]) -> tuple[str, str, str, str, str, int]:
    """Run ``xmm ARGV`` in this process; returns (outcome, error type, message, stdout, stderr, exit code)."""
    import logging
    import traceback

    from xmm.cli.main import main

    old_env = dict(os.environ)
    old_cwd = os.getcwd()
    os.environ.update(probe.get("env", {}))
    for key in probe.get("unset", []):
        os.environ.pop(key, None)
    if probe.get("cwd"):
        os.chdir(probe["cwd"])
    stdin_bytes = base64.b64decode(probe.get("stdin_b64", "")) if probe.get("stdin_b64") else b""
    out_buf, err_buf = _Buffer(), _Buffer()
    old_streams = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin_bytes), encoding="utf-8")  # strict, like a UTF-8 terminal
    sys.stdout = io.TextIOWrapper(out_buf, encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(err_buf, encoding="utf-8", errors="backslashreplace", write_through=True)
    logging.root.handlers.clear()  # `xmm` configures logging to the stderr of the moment
    limits = probe.get("fsize")
    old_fsize = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limits:
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limits), old_fsize[1]))
    code, outcome, etype, message = 0, "ok", "", ""
    try:
        main([*probe["argv"]])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except _Hang:
        raise
    except MemoryError:
        outcome, etype, message = "memory", "MemoryError", traceback.format_exc()[-3000:]
    except BaseException as e:  # noqa: BLE001 - anything escaping the CLI is what the fuzz suite looks for
        outcome, etype, message = "traceback", type(e).__name__, traceback.format_exc()[-3000:]
    finally:
        if limits:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_fsize)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdin, sys.stdout, sys.stderr = old_streams
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
    stdout = out_buf.getvalue().decode("utf-8", "replace")
    stderr = err_buf.getvalue().decode("utf-8", "replace")
    if outcome == "ok":
        if "Traceback (most recent call last)" in stderr:
            outcome, etype = "traceback", "logged"
        elif code not in (0, 1, 2):
            outcome, etype = "traceback", f"exit {code}"
        elif code != 0:
            outcome = "error"
            if code == 1 and "error:" not in stderr:
                outcome, etype = "traceback", "exit 1 without an error line"
    return outcome, etype, message, stdout, stderr, code


def worker(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    forbidden = [os.path.realpath(f) for f in spec["forbidden"]]
    markers = [Path(m) for m in spec["markers"]]
    state: dict[str, Any] = {"opens": [], "execs": []}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            try:
                p = os.fsdecode(args[0])
            except (TypeError, ValueError):
                return
            real = os.path.realpath(p) if forbidden else p
            if any(real == f or real.startswith(f + os.sep) for f in forbidden):
                state["opens"].append(p)
        elif event.startswith(EXEC_EVENTS):
            state["execs"].append(f"{event} {str(args)[:200]}")

    os.environ.setdefault("XMM_NO_PROGRESS", "1")
    if spec.get("setup"):
        exec(compile(spec["setup"], "<fuzz setup>", "exec"), {})  # the test's own code, never a probe's
    from xmm.registry import get_registry

    get_registry()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = _vm_size()
    limit = vm + int(spec["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    sys.addaudithook(hook)

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    with open(out_path, "a", buffering=1) as out:
        for probe in spec["probes"]:
            out.write(json.dumps({"event": "start", "id": probe["id"]}) + "\n")
            state["opens"], state["execs"] = [], []
            before = {m for m in markers if m.exists()}
            t = time.perf_counter()
            stdout = stderr = ""
            code = None
            signal.setitimer(signal.ITIMER_REAL, float(probe.get("timeout_s", spec["timeout_s"])))
            try:
                if probe["kind"] == "load":
                    outcome, etype, message = _load_probe(probe)
                elif probe["kind"] == "python":  # the harness's own self-checks: code the test wrote, not an input
                    exec(compile(probe["code"], probe["id"], "exec"), {})
                    outcome, etype, message = "ok", "", ""
                else:
                    outcome, etype, message, stdout, stderr, code = _cli_probe(probe)
            except _Hang:
                outcome, etype, message = "hang", "timeout", ""
            except MemoryError:
                outcome, etype, message = "memory", "MemoryError", ""
            except BaseException as e:  # noqa: BLE001
                import traceback

                outcome, etype, message = "traceback", type(e).__name__, traceback.format_exc()[-3000:]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            seconds = time.perf_counter() - t
            execs = list(state["execs"]) + [f"marker {m}" for m in markers if m.exists() and m not in before]
            texts = [message, stdout, stderr] + [_read_text(Path(f)) for f in probe.get("outputs", [])]
            echo = any(CANARY in x for x in texts) or any("root:x:0" in x for x in texts)
            said = "\n".join([message, stdout, stderr])
            matched = (probe.get("expect", "any") in ("any", outcome)
                       and all(m in said for m in probe.get("mention", []))
                       and len(stdout.splitlines()) >= probe.get("min_answers", 0))
            out.write(json.dumps({"event": "end", "id": probe["id"], "outcome": outcome, "error": etype,
                                  "message": message[:3000], "stdout": stdout[-2000:], "stderr": stderr[-4000:],
                                  "returncode": code, "seconds": round(seconds, 3), "outside_opens": state["opens"][:5],
                                  "execs": execs[:5], "echo": echo, "expect": probe.get("expect", "any"),
                                  "matched": matched}) + "\n")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace") if path.is_file() else ""
    except OSError:
        return ""


def _vm_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: xmm_fuzz_harness.py worker PROBES.json RESULTS.jsonl")
