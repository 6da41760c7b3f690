"""Triton adapter: run one ONNX graph (`model.onnx` beside this file) in ONNX Runtime on CPU.

Used for every graph model (contract.GRAPH_MODELS) when the server has no native
onnxruntime backend (the pip tritonserver). In bf16 CPU repositories blip_vision runs the checkpoint's vision
model on the torch runner instead (the `vision_runner` parameter; `ModelContext.graph_model_runner`). With max_batch_size > 0 the requests of one `execute` call are
concatenated into one batch; with 0 (decoders called by the generators over BLS) each request is one batch.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning.backend.runners import ModelContext
from captioning.backend.triton_utils import error_response


class TritonPythonModel:
    def initialize(self, args):
        model = ModelContext.setup(args)
        self.runner = model.graph_model_runner()
        self.batched = model.max_batch_size > 0

    def execute(self, requests):
        try:
            feeds = [
                {
                    name: pb_utils.get_input_tensor_by_name(r, name).as_numpy()
                    for name in self.runner.input_names
                }
                for r in requests
            ]
        except Exception as exc:
            return [error_response(ValueError(f"bad input tensors: {exc}")) for _ in requests]
        if self.batched and len(requests) > 1:
            return self._run_batched(feeds)
        return [self._run_one(feed) for feed in feeds]

    def _run_one(self, feed):
        try:
            outputs = self.runner.run(feed)
        except Exception as exc:
            return error_response(RuntimeError(str(exc)))
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in outputs.items()]
        )

    def _run_batched(self, feeds):
        sizes = [len(next(iter(f.values()))) for f in feeds]
        try:
            merged = {name: np.concatenate([f[name] for f in feeds]) for name in self.runner.input_names}
            outputs = self.runner.run(merged)
        except Exception:
            return [self._run_one(feed) for feed in feeds]  # isolate the request that breaks the batch
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(k, np.ascontiguousarray(v[start : start + size])) for k, v in outputs.items()
            ]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses
