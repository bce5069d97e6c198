"""The fuzz harness sees what it must count: a file opened under a forbidden folder, a process started, a marker
file, a traceback, a hang and a worker that dies (the suite's zeros mean nothing unless these are caught)."""

from __future__ import annotations

from pathlib import Path

from xmm_fuzz_harness import CANARY, clean, run_probes, table


def test_the_harness_catches_every_kind_of_failure(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(CANARY)
    marker = tmp_path / "marker"

    def py(pid: str, code: str, **extra: object) -> dict[str, object]:
        return {"id": pid, "group": "self-check", "kind": "python", "code": code, **extra}

    probes = [
        py("fine", "x = 1"),
        py("outside-read", f"open({str(outside / 'secret.txt')!r}).read()"),
        py("process", "import subprocess; subprocess.run(['true'])"),
        py("marker", f"open({str(marker)!r}, 'w').close()"),
        py("traceback", "raise KeyError('boom')"),
        py("hang", "import time; time.sleep(60)", timeout_s=2),
        py("memory", "b = bytearray(8 << 30)"),
        py("dies", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
        py("after-the-death", "x = 2"),
    ]
    results = {r["id"]: r for r in run_probes(probes, tmp_path / "work", memory_bytes=1 << 30, timeout_s=20,
                                               forbidden=[outside], markers=[marker])}
    assert clean(results["fine"]) and clean(results["after-the-death"])
    assert results["outside-read"]["outside_opens"] and not clean(results["outside-read"])
    assert any("subprocess.Popen" in e for e in results["process"]["execs"])
    assert any("marker" in e for e in results["marker"]["execs"])
    assert results["traceback"]["outcome"] == "traceback"
    assert results["hang"]["outcome"] == "hang"
    assert results["memory"]["outcome"] == "memory"
    assert results["dies"]["outcome"] == "kill"
    total = table(results.values())[-1]
    assert total["probes"] == 9 and total["clean"] == 2
