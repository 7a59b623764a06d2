"""Provider errors, classified once at the adapter boundary.

::

    ProviderError (AiAppsError)
    ├── ThrottledError     429 / quota; carries the server's ``retry_after``; retryable
    ├── TransientError     5xx, timeouts, broken connections; retryable
    ├── PermanentError     400, content filter, bad input; never retried
    │   └── UnsupportedError   the provider cannot do this at all (language pair, missing package)
    └── AuthError          401 / 403; never retried

Adapters translate their driver's errors into these with ``raise ... from``. The actor turns
them into a ``StepFailed`` event carrying ``error_class`` and ``retryable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.errors import AiAppsError

if TYPE_CHECKING:
    from actors.ratelimit import RateLimitInfo


class ProviderError(AiAppsError):
    """A provider could not do the work asked of it."""

    error_class = "provider"

    def __init__(self, message: str, *, provider: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider


class ThrottledError(ProviderError):
    """The service is rate limiting us; try again after ``retry_after`` seconds.
    ``rate_limit`` is what the 429's headers said (remaining, reset, limits), for the throttle."""

    error_class = "throttled"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        provider: str | None = None,
        rate_limit: RateLimitInfo | None = None,
    ) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after
        self.rate_limit = rate_limit


class TransientError(ProviderError):
    """A failure that may go away on its own: 5xx, timeout, connection reset."""

    error_class = "transient"
    retryable = True


class PermanentError(ProviderError):
    """The same request will fail again: bad input, content filter, 400."""

    error_class = "permanent"


class UnsupportedError(PermanentError):
    """The provider cannot serve this request at all (e.g. a language pair it does not have,
    or a system package that is not installed). Says what would make it work."""

    error_class = "unsupported"


class AuthError(ProviderError):
    """The credentials were refused (401/403)."""

    error_class = "auth"
