"""Actors: the runtime, one actor per AI capability, provider protocols and errors."""

from actors.blobstore import BlobNotFound, BlobStore, FileBlobStore
from actors.capabilities import (
    Audio,
    Detection,
    ImageAnalysis,
    ImageAnalyzer,
    LanguageDetector,
    Responder,
    ResponseDraft,
    ResponseQuery,
    SpeechSynthesizer,
    Translation,
    Translator,
)
from actors.errors import (
    AuthError,
    PermanentError,
    ProviderError,
    ThrottledError,
    TransientError,
    UnsupportedError,
)
from actors.runtime import Actor, ActorRuntime, Inbox, Middleware, bind_log_context
from actors.services import (
    SERVICES,
    LanguageActor,
    ResponderActor,
    SpeechActor,
    TranslationActor,
    VisionActor,
)

__all__ = [
    "SERVICES",
    "Actor",
    "ActorRuntime",
    "Audio",
    "AuthError",
    "BlobNotFound",
    "BlobStore",
    "Detection",
    "FileBlobStore",
    "ImageAnalysis",
    "ImageAnalyzer",
    "Inbox",
    "LanguageActor",
    "LanguageDetector",
    "Middleware",
    "PermanentError",
    "ProviderError",
    "Responder",
    "ResponderActor",
    "ResponseDraft",
    "ResponseQuery",
    "SpeechActor",
    "SpeechSynthesizer",
    "ThrottledError",
    "TransientError",
    "Translation",
    "TranslationActor",
    "Translator",
    "UnsupportedError",
    "VisionActor",
    "bind_log_context",
]
