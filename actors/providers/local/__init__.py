"""Offline, real providers: no network, no account. Each module is imported only when chosen."""
