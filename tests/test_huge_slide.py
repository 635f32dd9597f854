"""A slide whose header claims 200,000 x 200,000 px: memory stays flat, progress shows a time estimate,
Ctrl-C stops the run cleanly."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mitoqp.synthetic_slide import write_header_only_svs


BAR = re.compile(r"huge:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[\d:]+<([\d:]+)")  # windows done / total, ETA
WARM_WINDOWS = 20


def windows_done(text: str) -> int:
    bars = BAR.findall(text)
    return int(bars[-1][0]) if bars else 0


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key}")


def test_200k_slide_flat_memory_progress_and_ctrl_c(tiny_model_dir, tmp_path):
    slide = write_header_only_svs(tmp_path / "huge.svs", 200_000, (0.1, 0.1, 0.6, 0.6))
    assert slide.stat().st_size < 20e6  # 625 mm2 of tissue claimed, no level-0 data stored
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with open(log, "w") as err:
        # Ctrl-C as a terminal sends it: a suite started in the background (`cmd &` without job control) ignores
        # SIGINT, and a child would inherit that and rightly ignore the test's Ctrl-C
        proc = subprocess.Popen([sys.executable, "-m", "mitoqp.cli", "run", str(slide), "-o", str(out),
                                 "--model", str(tiny_model_dir)], stderr=err, stdout=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 120
            # past the warm-up (numba kernels compiled, thread pools and the first batches): counted in windows,
            # not seconds, so a machine busy with other work does not count its slower warm-up as growth
            while windows_done(log.read_text()) < WARM_WINDOWS and time.time() < deadline:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.5)
            samples = []
            for _ in range(15):  # seconds of streaming: hundreds of windows
                time.sleep(1)
                samples.append(rss_mb(proc.pid))
            peak = rss_mb(proc.pid, "VmHWM")
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # say where it hung, not just that it did: every thread's stack
                proc.send_signal(signal.SIGUSR1)
                time.sleep(2)
                text = log.read_text()
                start = min((i for i in (text.find("Thread 0x"), text.find("Current thread 0x")) if i >= 0), default=0)
                raise AssertionError("no exit 30 s after Ctrl-C; threads:\n" + text[start:][-6000:]) from None
        finally:
            proc.kill()
    text = log.read_text()
    steady = samples[4:]
    assert max(steady) - min(steady) < 100, samples  # flat while walking the slide
    assert peak < 1500, peak
    bars = BAR.findall(text)
    assert bars and int(bars[-1][1]) > 1000 and int(bars[-1][0]) > 50  # windows done of total, with an ETA
    assert code == 130 and text.strip().splitlines()[-1].startswith("interrupted:"), text[-500:]
    assert "Traceback" not in text
    assert sorted(p.name for p in out.iterdir()) == []  # no half-written file, no result, the lock released
