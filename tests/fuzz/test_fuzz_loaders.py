"""Every loader against hostile files (issue 17): generated variants of valid PNG / JPEG / WAV / MP4 / JSON files
(truncations, bit flips, random bytes), crafted headers (a 100000x1 PNG, a WAV claiming 10 hours, 200,000-deep JSON)
and special files (FIFO, folder, /dev/zero, symlink loop, a 4 GiB sparse file), each in a worker under a memory limit
and a timeout. Each must be accepted or refused with a typed xmm error: never a traceback, a hang or a kill."""

from __future__ import annotations

import json
import os
from pathlib import Path

from xmm_fuzz_harness import format_table, loader_probes, run_probes, table


def test_every_loader_survives_hostile_files(tmp_path: Path, xmm_home: Path) -> None:
    probes = loader_probes(tmp_path / "corpus")
    results = run_probes(probes, tmp_path / "work", memory_bytes=3 << 30, timeout_s=60,
                         env={"XMM_HOME": str(xmm_home), "OMP_NUM_THREADS": "1"})
    rows = table(results)
    print("\n" + format_table(rows))
    if os.environ.get("XMM_FUZZ_REPORT"):  # the whole record, for the probe table
        Path(os.environ["XMM_FUZZ_REPORT"]).write_text(json.dumps({"rows": rows, "results": results}, indent=1))
    bad = [r for r in results if r["outcome"] not in ("ok", "error") or r["echo"]]
    assert not bad, json.dumps(bad[:5], indent=1)
    total = rows[-1]
    assert total["probes"] == len(probes) > 300 and total["clean"] == total["probes"]
    by_id = {r["id"]: r for r in results}
    for modality in ("image", "audio", "speech", "video", "device"):
        for special, words in {"fifo": "FIFO", "directory": "directory", "dev-zero": "character device",
                               "symlink-loop": "symlink loop", "sparse-4GiB": "over the limit"}.items():
            r = by_id[f"load/{modality}/{special}"]
            if modality == "video" and special == "sparse-4GiB":
                words = "not a readable video"  # 4 GiB is within video's limit: streamed, only the header is read
            assert r["outcome"] == "error" and words in r["message"], (modality, special, r)
            assert r["seconds"] < 1.0, (modality, special, r["seconds"])  # from stat alone, never read
    for valid in ("image/png-valid", "image/jpg-valid", "audio/wav-valid", "speech/wav-valid", "video/mp4-valid",
                  "device/json-valid"):
        assert by_id[f"load/{valid}"]["outcome"] == "ok", by_id[f"load/{valid}"]
    assert by_id["load/image/png-100000x1"]["outcome"] in ("ok", "error")
    assert by_id["load/speech/wav-rate-1hz"]["error"] == "MediaTooLargeError"  # 100 s, over speech's 30 s
    assert by_id["load/device/json-deep-200000"]["outcome"] == "error"
