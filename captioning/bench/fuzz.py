"""Send the fuzz corpus (`captioning.testing.fuzz`) to a server, 8 at a time, interleaved with good requests.

Every answer must be a success or INVALID_ARG within the client timeout (a timeout counts as a hang), every
`ok` case must succeed and every `invalid` case must be refused, and each good request must get the same
caption it got alone before the run. `run_fuzz` returns the tally; `captioning fuzz` prints it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from captioning import contract
from captioning.testing.fuzz import FuzzCase


@dataclasses.dataclass(frozen=True)
class Outcome:
    case: str
    expect: str
    status: str  # "ok", "INVALID_ARG", or the other status / "hang"
    seconds: float
    message: str = ""

    @property
    def correct(self) -> bool:
        if self.status not in ("ok", "INVALID_ARG"):
            return False
        return self.expect == "either" or (self.expect == "ok") == (self.status == "ok")


def _send(client, case: FuzzCase, timeout_s: float) -> Outcome:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tensor = grpcclient.InferInput(case.input_name, list(case.array.shape), case.datatype)
    started = time.perf_counter()
    try:
        tensor.set_data_from_numpy(case.array)
        client.infer(case.model, [tensor], parameters=case.parameters or None, client_timeout=timeout_s)
        return Outcome(case.name, case.expect, "ok", time.perf_counter() - started)
    except InferenceServerException as exc:
        if exc.status() is None:  # tritonclient refused to build it (e.g. a list as a parameter value)
            return Outcome(
                case.name, case.expect, "INVALID_ARG", time.perf_counter() - started, f"client: {exc}"
            )
        status = str(exc.status())
        kind = "INVALID_ARG" if status == "StatusCode.INVALID_ARGUMENT" else status
        if status == "StatusCode.DEADLINE_EXCEEDED":
            kind = "hang"
        return Outcome(case.name, case.expect, kind, time.perf_counter() - started, exc.message() or "")
    except Exception as exc:  # the client refused to build the request: the server never saw it
        return Outcome(case.name, case.expect, "INVALID_ARG", time.perf_counter() - started, f"client: {exc}")


def _caption(client, data: bytes, timeout_s: float) -> str:
    import numpy as np
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput(contract.IMAGE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer(contract.ARABIC_MODEL, [tensor], client_timeout=timeout_s)
    return "\n".join(
        result.as_numpy(name)[0][0].decode() for name in (contract.CAPTION_EN, contract.CAPTION_AR)
    )


def run_fuzz(
    url: str, cases: list[FuzzCase], good: list[bytes], concurrency: int = 8, timeout_s: float = 120.0
) -> dict:
    """Fuzz cases and good requests interleaved (one good per three fuzz), `concurrency` in flight."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        references = [_caption(client, data, timeout_s) for data in good]
        jobs: list[tuple[str, object]] = []
        for i, case in enumerate(cases):
            jobs.append(("fuzz", case))
            if i % 3 == 2:
                jobs.append(("good", (i // 3) % len(good)))

        def one(job):
            kind, item = job
            if kind == "fuzz":
                return _send(client, item, timeout_s)
            started = time.perf_counter()
            try:
                same = _caption(client, good[item], timeout_s) == references[item]
                return Outcome(f"good {item}", "ok", "ok" if same else "wrong", time.perf_counter() - started)
            except Exception as exc:
                return Outcome(
                    f"good {item}", "ok", type(exc).__name__, time.perf_counter() - started, str(exc)
                )

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(one, jobs))
    wrong = [o for o in outcomes if not o.correct]
    return {
        "requests": len(outcomes),
        "fuzz": len(cases),
        "good": len(outcomes) - len(cases),
        "statuses": dict(Counter(o.status for o in outcomes)),
        "wrong": [dataclasses.asdict(o) for o in wrong],
        "slowest_s": max(o.seconds for o in outcomes),
        "outcomes": [dataclasses.asdict(o) for o in outcomes],
    }
