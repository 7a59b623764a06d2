"""The composition root: settings, wiring from settings, the CLI."""

from service.settings import ProviderSettings, Settings
from service.wiring import ConfigurationError, Service

__all__ = ["ConfigurationError", "ProviderSettings", "Service", "Settings"]
