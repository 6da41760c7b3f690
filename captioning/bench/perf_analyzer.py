"""Drive Triton's `perf_analyzer` binary: find it, feed it real inputs, bound its run time, parse its CSV.

`scripts/install-perf-analyzer.sh` puts the binary (from the tritonclient 2.48.0 wheel, the last one that
runs on glibc 2.36) and the `libcudart.so.12` it links under `.venv/opt/perf_analyzer/`; `$PERF_ANALYZER`
points elsewhere. Each run measures one model at one concurrency in count windows (at least N requests
each). By default it is perf_analyzer's steady-state method: windows follow each other under continuous
load until three agree, so the pipeline's fill and drain stay out of the figures. `steady=False` measures
one burst of N requests instead: a known amount of work, but fill and drain count against throughput.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

LOG = logging.getLogger(__name__)

INSTALL_HINT = "run `make install` or `bash scripts/install-perf-analyzer.sh`"


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, failed, timed out, or wrote no usable report."""


def find_perf_analyzer() -> Path | None:
    """`$PERF_ANALYZER`, else the copy installed beside this interpreter's venv, else one on PATH."""
    env = os.environ.get("PERF_ANALYZER")
    if env:
        return Path(env) if Path(env).is_file() else None
    candidate = Path(sys.prefix) / "opt" / "perf_analyzer" / "perf_analyzer"
    if candidate.is_file():
        return candidate
    found = shutil.which("perf_analyzer")
    return Path(found) if found else None


def require_perf_analyzer() -> Path:
    binary = find_perf_analyzer()
    if binary is None:
        raise PerfAnalyzerError(f"perf_analyzer is not installed ({INSTALL_HINT})")
    return binary


def perf_env(binary: Path) -> dict[str, str]:
    """The binary's folder (which holds libcudart.so.12) goes first on LD_LIBRARY_PATH."""
    env = os.environ.copy()
    paths = [str(binary.parent), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    return env


# ------------------------------------------------------------------------------------------ input data


def string_element(data: bytes) -> bytes:
    """One element of a Triton BYTES tensor as perf_analyzer's b64 input wants it: 4-byte little-endian
    length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def bytes_input_data(name: str, items: Sequence[bytes]) -> dict:
    """perf_analyzer `--input-data` JSON: one request per item, a [1]-shaped BYTES tensor each, sent
    round-robin. Binary payloads (JPEGs) travel base64-encoded with the length prefix included."""
    if not items:
        raise ValueError("input data needs at least one item")
    return {
        "data": [
            {name: {"content": {"b64": base64.b64encode(string_element(item)).decode("ascii")}, "shape": [1]}}
            for item in items
        ]
    }


def text_input_data(name: str, texts: Sequence[str]) -> dict:
    """Same for text inputs; plain JSON strings are accepted for STRING tensors."""
    if not texts:
        raise ValueError("input data needs at least one text")
    return {"data": [{name: {"content": [text], "shape": [1]}} for text in texts]}


def decode_input_data(data: dict, name: str) -> list[bytes]:
    """The inverse of `bytes_input_data` (and `text_input_data`): what each request will carry."""
    items = []
    for entry in data["data"]:
        content = entry[name]["content"]
        if isinstance(content, dict):
            raw = base64.b64decode(content["b64"])
            (length,) = struct.unpack("<I", raw[:4])
            if length != len(raw) - 4:
                raise ValueError(f"length prefix {length} does not match {len(raw) - 4} payload bytes")
            items.append(raw[4:])
        else:
            items.append(content[0].encode("utf-8"))
    return items


def write_input_data(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


# ------------------------------------------------------------------------------------------ running


@dataclasses.dataclass(frozen=True)
class PerfRun:
    """One measurement: `requests` requests to `model` with `concurrency` outstanding at a time."""

    model: str
    url: str  # gRPC host:port
    input_data: Path
    concurrency: int = 1
    requests: int = 16
    percentile: int = 95
    timeout_s: float = 900.0
    steady: bool = True  # False: one burst of `requests` (a single window, no stability loop)
    # Three consecutive windows whose throughput and latency lie within this many percent (max / min) make a
    # measurement. perf_analyzer's 10% rarely holds on a noisy 2-core machine with windows of ~30 requests.
    stability_percent: int = 50
    max_trials: int = 8  # windows before perf_analyzer gives up (`captioning bench` then measures a burst)

    def command(self, binary: Path, csv_path: Path) -> list[str]:
        requests = max(self.requests, self.concurrency)
        args = [
            str(binary),
            "-m",
            self.model,
            "-u",
            self.url,
            "-i",
            "grpc",
            "--input-data",
            str(self.input_data),
            "--concurrency-range",
            f"{self.concurrency}:{self.concurrency}",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(requests),
            "-f",
            str(csv_path),
        ]
        if self.steady:
            # Stability on the average latency: a p95 over ~30 requests swings too much to ever settle.
            steady = [
                "--stability-percentage",
                str(self.stability_percent),
                "--max-trials",
                str(self.max_trials),
            ]
            return [*args, *steady]
        return [*args, "--percentile", str(self.percentile), "--request-count", str(requests)]


@dataclasses.dataclass(frozen=True)
class PerfResult:
    """One CSV row of perf_analyzer; latencies in milliseconds (the CSV has microseconds)."""

    concurrency: int
    throughput: float  # inferences (= requests of one image or text) per second
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_ms: float
    server_compute_ms: float  # input + infer + output, as perf_analyzer sees it for the top model

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _us_to_ms(row: dict[str, str], key: str) -> float:
    value = row.get(key, "")
    return float(value) / 1000.0 if value not in ("", None) else float("nan")


# perf_analyzer's average latency is the sum of these stages; the CSV has no column for it.
AVERAGE_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)


def _average_ms(row: dict[str, str]) -> float:
    if row.get("Avg latency"):
        return _us_to_ms(row, "Avg latency")
    return sum(_us_to_ms(row, key) for key in AVERAGE_PARTS if row.get(key))


def parse_csv(text: str) -> list[PerfResult]:
    """Rows of a `perf_analyzer -f` report (one per concurrency level)."""
    reader = csv.DictReader(io.StringIO(text))
    required = {"Concurrency", "Inferences/Second", "p50 latency", "p95 latency", "p99 latency"}
    if reader.fieldnames is None or not required <= set(reader.fieldnames):
        raise PerfAnalyzerError(f"not a perf_analyzer latency report (columns {reader.fieldnames})")
    results = []
    for row in reader:
        if not row.get("Concurrency"):
            continue
        compute = sum(
            _us_to_ms(row, key)
            for key in ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
        )
        results.append(
            PerfResult(
                concurrency=int(row["Concurrency"]),
                throughput=float(row["Inferences/Second"]),
                p50_ms=_us_to_ms(row, "p50 latency"),
                p90_ms=_us_to_ms(row, "p90 latency"),
                p95_ms=_us_to_ms(row, "p95 latency"),
                p99_ms=_us_to_ms(row, "p99 latency"),
                avg_ms=_average_ms(row),
                server_queue_ms=_us_to_ms(row, "Server Queue"),
                server_compute_ms=compute,
            )
        )
    if not results:
        raise PerfAnalyzerError("perf_analyzer report has no rows")
    return results


def run_perf_analyzer(run: PerfRun, workdir: Path, binary: Path | None = None) -> PerfResult:
    """Run one measurement and return its row; errors carry perf_analyzer's own output."""
    binary = binary or require_perf_analyzer()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    csv_path = workdir / f"{run.model}-c{run.concurrency}-{os.getpid()}.csv"
    csv_path.unlink(missing_ok=True)
    args = run.command(binary, csv_path)
    LOG.debug("running %s", " ".join(args))
    try:
        done = subprocess.run(
            args, env=perf_env(binary), capture_output=True, text=True, timeout=run.timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PerfAnalyzerError(
            f"perf_analyzer on {run.model} (concurrency {run.concurrency}) did not finish "
            f"within {run.timeout_s:.0f} s"
        ) from exc
    if done.returncode != 0 or not csv_path.is_file():
        tail = (done.stdout + done.stderr).strip()[-2000:]
        raise PerfAnalyzerError(f"perf_analyzer failed on {run.model} (exit {done.returncode}):\n{tail}")
    rows = parse_csv(csv_path.read_text())
    return rows[0]
