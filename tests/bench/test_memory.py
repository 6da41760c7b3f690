import os
import subprocess
import sys

from captioning.bench.memory import PeakMemory, memory_kib


def test_memory_of_a_live_and_an_ended_process() -> None:
    rss, shared, anon = memory_kib(os.getpid())
    assert rss > 10_000 and shared is not None and 0 < anon < rss  # the rest is file-backed (libraries)
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert memory_kib(int(child.stdout)) == (None, None, None)  # ended: no figure, no error


def test_peak_follows_the_largest_sample() -> None:
    """A parent whose resident memory rises and falls: the peak keeps the high point, not the last sample."""
    script = "import time; b = bytearray(300 << 20); time.sleep(1.5); del b; time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        with PeakMemory(proc.pid, every_s=0.1) as memory:
            import time

            time.sleep(2.5)
        assert memory_kib(proc.pid)[0] < 200 * 1024  # the 300 MiB were given back
        result = memory.result()
        assert result["per_model_mib"]["tritonserver"] >= 300  # the server pid's own name
        assert result["total_mib"] >= 300
    finally:
        proc.kill()
        proc.wait()
