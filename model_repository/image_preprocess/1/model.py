"""Triton adapter: encoded image bytes -> BLIP pixel values, and the door of the image pipelines: each request
is admitted here, for every stage after it, or refused at once (captioning/runtime/door.py). The work is in
`captioning.runtime.preprocess`."""

import numpy as np
import triton_python_backend_utils as pb_utils

from captioning import contract
from captioning.backend.runners import ModelContext
from captioning.backend.tickets import TicketDesk, door_limits, ticket_tensor
from captioning.backend.triton_utils import error_response, respond_per_row, string_rows
from captioning.runtime.preprocess import PreprocessConfig, preprocess_bytes


class TritonPythonModel:
    desk = TicketDesk()  # initialize() sets the door's limits; this one admits everything

    def initialize(self, args):
        model = ModelContext.setup(args)
        max_pixels = int(model.parameters.get(contract.PARAM_MAX_PIXELS, contract.MAX_PIXELS))
        self.config = PreprocessConfig.from_file(
            model.directory / "preprocessor_config.json", max_pixels=max_pixels
        )
        self.desk = TicketDesk(door_limits(model.parameters))

    def execute(self, requests):
        """Every request of the batch is admitted or refused before any image is decoded, so a refusal
        costs nothing; a ticket whose images fail is closed."""
        entered = [self._enter(request) for request in requests]
        return [self._one(*item) if isinstance(item, tuple) else error_response(item) for item in entered]

    def _enter(self, request):
        try:
            images = string_rows(request, contract.IMAGE_INPUT)
            return images, self.desk.enter(request, len(images))
        except Exception as exc:
            return exc

    def _one(self, images, ticket):
        results = []
        for data in images:
            try:
                results.append(preprocess_bytes(data, self.config))
            except Exception as exc:
                results.append(exc if isinstance(exc, ValueError) else RuntimeError(str(exc)))
        (response,) = respond_per_row(
            [len(images)],
            results,
            lambda rows: [
                pb_utils.Tensor(contract.PIXEL_VALUES, np.stack(rows)),
                ticket_tensor(ticket, len(rows)),
            ],
        )
        if ticket is not None and response.has_error():
            self.desk.close(ticket.id, answered=False)
        return response
