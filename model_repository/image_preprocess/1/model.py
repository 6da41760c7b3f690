"""Triton adapter: encoded image bytes -> BLIP pixel values. The work is in `captioning.runtime.preprocess`."""

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning import contract
from captioning.backend.runners import ModelContext
from captioning.backend.triton_utils import respond_per_row, string_rows
from captioning.runtime.preprocess import PreprocessConfig, preprocess_bytes


class TritonPythonModel:
    def initialize(self, args):
        model = ModelContext.setup(args)
        max_pixels = int(model.parameters.get(contract.PARAM_MAX_PIXELS, contract.MAX_PIXELS))
        self.config = PreprocessConfig.from_file(
            model.directory / "preprocessor_config.json", max_pixels=max_pixels
        )

    def execute(self, requests):
        rows_per_request, results = [], []
        for request in requests:
            try:
                images = string_rows(request, contract.IMAGE_INPUT)
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
            rows_per_request, results, lambda rows: [pb_utils.Tensor(contract.PIXEL_VALUES, np.stack(rows))]
        )
