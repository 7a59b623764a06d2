"""Loopback fakes of the Azure AI services' wire protocols, for the real SDK clients.

* :mod:`tests.azure_fakes.http`: one aiohttp server answering Translator, Image Analysis,
  Azure OpenAI and OpenAI (``/v1``) REST calls, recording every request, scriptable to fail.
* :mod:`tests.azure_fakes.speech_ws`: the Speech text-to-speech websocket (USP protocol).

The shapes follow what the pinned SDK versions send (see ``../shared/notes``, section B); the
tests assert the recorded requests so a new SDK version that changes them fails loudly.
"""

from tests.azure_fakes.http import (
    Failure,
    FakeAzure,
    Recorded,
    content_filter,
    drop,
    forbidden,
    server_error,
    throttle,
    unauthorized,
)
from tests.azure_fakes.speech_ws import FakeSpeech

__all__ = [
    "Failure",
    "FakeAzure",
    "FakeSpeech",
    "Recorded",
    "content_filter",
    "drop",
    "forbidden",
    "server_error",
    "throttle",
    "unauthorized",
]
