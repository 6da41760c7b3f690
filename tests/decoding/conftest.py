"""The decoding tests compare with torch one thread at a time: reference logits then do not depend on the
thread count, and two cores are not oversubscribed."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
