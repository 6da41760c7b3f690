"""Triton adapter: encoded image bytes -> BLIP pixel values. The work is in `captioning.preprocess`."""

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning.heap import keep_heap
from captioning.preprocess import PreprocessConfig, preprocess_bytes
from captioning.triton_utils import model_dir, model_parameters, respond_per_row, string_rows


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # before any large allocation; see captioning/heap.py
        params = model_parameters(args)
        self.config = PreprocessConfig.from_file(
            model_dir(args) / "preprocessor_config.json", max_pixels=int(params.get("max_pixels", 50_000_000))
        )

    def execute(self, requests):
        rows_per_request, results = [], []
        for request in requests:
            try:
                images = string_rows(request, "image")
            except Exception as exc:
                rows_per_request.append(1)
                results.append(exc)
                continue
            rows_per_request.append(len(images))
            for data in images:
                try:
                    results.append(preprocess_bytes(data, self.config))
                except Exception as exc:
                    results.append(exc if isinstance(exc, ValueError) else RuntimeError(str(exc)))
        return respond_per_row(
            rows_per_request, results, lambda rows: [pb_utils.Tensor("pixel_values", np.stack(rows))]
        )
