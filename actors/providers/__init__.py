"""Provider adapters, one module per family, imported only when chosen by settings."""
