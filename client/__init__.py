"""Client SDK and `caption` CLI; installs without torch.

from captioning.client import CaptionClient
with CaptionClient("localhost:8001", wait_ready_s=30) as client:
    print(client.caption("photo.jpg").arabic)
with CaptionClient("grpcs://triton:8001", transport=Transport(root_certificates="ca.pem")) as client: ...
"""

from captioning.client.aio import AsyncCaptionClient
from captioning.client.base import RetryPolicy
from captioning.client.endpoint import Endpoint, parse_endpoint
from captioning.client.errors import (
    CaptionError,
    CaptionTimeoutError,
    InvalidInputError,
    ModelNotReadyError,
    ServerBusyError,
    ServerUnreachableError,
)
from captioning.client.sdk import CaptionClient
from captioning.client.transport import Transport
from captioning.client.types import CaptionResult, GenerationOptions

__all__ = [
    "AsyncCaptionClient",
    "CaptionClient",
    "CaptionError",
    "CaptionResult",
    "CaptionTimeoutError",
    "Endpoint",
    "GenerationOptions",
    "InvalidInputError",
    "ModelNotReadyError",
    "RetryPolicy",
    "ServerBusyError",
    "ServerUnreachableError",
    "Transport",
    "parse_endpoint",
]
