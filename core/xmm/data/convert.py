"""``xmm data convert``: any source -> one native xmm JSONL manifest.

Media files keep their place: a path under the output's folder is written relative to it, any other as an absolute
path (train with ``media_root`` set to the folder the report names, since paths outside a manifest's folder are
refused otherwise), or copied next to the output with ``copy_media``. Media that came inline (``data:`` URLs,
base64 audio, ``datasets`` bytes, tar members) are written once each, named by their sha256, into ``OUT.media/``.
Bad records are skipped and reported, never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xmm.data.dataset import BadExample, DatasetChain, XmmDataset
from xmm.data.errors import DataError
from xmm.io import atomic_write
from xmm.modality import ModalitySpec

# magic numbers of the inline media xmm's plugins read, for a file name the loaders recognise
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"RIFF", ".wav"), (b"fLaC", ".flac"),
          (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\x93NUMPY", ".npy"), (b"\x1aE\xdf\xa3", ".webm"))


@dataclass
class ConvertReport:
    """What :func:`convert_dataset` wrote and skipped."""

    out: str
    written: int = 0
    bad: list[BadExample] = field(default_factory=list)
    media_files: int = 0
    outside: int = 0
    outside_root: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "written": self.written, "media_files_written": self.media_files,
                "outside_paths": self.outside, "media_root_to_use": self.outside_root,
                "bad": {"total": len(self.bad), "samples": [{"kind": b.kind, "where": b.key, "message": b.message}
                                                            for b in self.bad]}}


def _suffix(data: bytes, spec: ModalitySpec) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[4:8] == b"ftyp":
        return ".mp4"
    if data.lstrip()[:1] in (b"{", b"["):
        return ".json"
    return spec.file_extensions[0] if spec.file_extensions else ".bin"


class _Writer:
    def __init__(self, out: Path, specs: dict[str, ModalitySpec], copy_media: bool, report: ConvertReport) -> None:
        self.folder = out.resolve().parent
        self.media = out.resolve().with_name(out.name + ".media")
        self.specs, self.copy_media, self.report = specs, copy_media, report

    def _store(self, data: bytes, name_hint: str) -> str:
        self.media.mkdir(parents=True, exist_ok=True)
        target = self.media / name_hint
        if not target.exists():
            atomic_write(target, lambda p: p.write_bytes(data))
            self.report.media_files += 1
        return os.path.relpath(target, self.folder)

    def _path(self, path: str) -> str:
        inside = path.startswith(str(self.folder).rstrip(os.sep) + os.sep)
        if inside:
            return os.path.relpath(path, self.folder)
        if self.copy_media:
            digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:20]
            target = self.media / f"{digest}{Path(path).suffix}"
            if not target.exists():
                self.media.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
                self.report.media_files += 1
            return os.path.relpath(target, self.folder)
        self.report.outside += 1
        parent = os.path.dirname(path)
        root = self.report.outside_root
        self.report.outside_root = parent if root is None else os.path.commonpath([root, parent])
        return path

    def part(self, part: dict[str, Any]) -> dict[str, Any]:
        kind = part["type"]
        if kind == "text":
            return part
        if "path" in part:
            return {"type": kind, "path": self._path(part["path"])}
        if "bytes" in part:
            data = part["bytes"]
            name = hashlib.sha256(data).hexdigest()[:32] + _suffix(data, self.specs[kind])
            return {"type": kind, "path": self._store(data, name)}
        obj = part[kind]
        if isinstance(obj, np.ndarray):
            return {"type": kind, kind: obj.tolist()}
        json.dumps(obj)  # raises TypeError for what JSON cannot hold
        return {"type": kind, kind: obj}

    def line(self, messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
        out = []
        for m in messages:
            content = m["content"]
            if isinstance(content, list):
                content = [self.part(p) for p in content]
            out.append({"role": m["role"], "content": content})
        return json.dumps({**extra, "messages": out}, ensure_ascii=False)


def convert_dataset(ds: XmmDataset | DatasetChain, out: str | Path, *, copy_media: bool = False) -> ConvertReport:
    """Write every usable record of ``ds`` to the JSONL manifest ``out`` (atomically); bad ones are reported."""
    out = Path(out)
    parts = ds.datasets if isinstance(ds, DatasetChain) else [ds]
    report = ConvertReport(str(out))
    writer = _Writer(out, parts[0].specs, copy_media, report)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for part in parts:
                for i in range(len(part)):
                    try:
                        ex = part.example(i)
                        line = writer.line(ex.messages, ex.extra)
                    except DataError as e:
                        report.bad.append(BadExample(e.kind, str(e), e.source or part.where(i)))
                        continue
                    except (TypeError, ValueError) as e:
                        where = part.where(i)
                        report.bad.append(BadExample("unwritable", f"{where}: cannot write as JSON: {e}", where))
                        continue
                    f.write(line + "\n")
                    report.written += 1

    atomic_write(out, write)
    return report
