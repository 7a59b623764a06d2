"""The public names of each package: a change here is a change to the API."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "bus": ["ALL_TYPES", "DeadLetter", "DeadLetterNotFound", "Handler", "InMemoryTransport",
            "RetryPolicy", "Transport", "TransportError"],
    "service": ["ConfigurationError", "ProviderSettings", "Service", "Settings"],
}


class TestPublicNames:
    @pytest.mark.parametrize("package", sorted(PUBLIC))
    def test_pinned(self, package: str) -> None:
        """__all__ is exactly the pinned list."""
        assert sorted(importlib.import_module(package).__all__) == sorted(PUBLIC[package])

    @pytest.mark.parametrize("package", ["events", "bus", "actors", "saga", "service"])
    def test_all_sorted_and_importable(self, package: str) -> None:
        """Every name in __all__ exists and is listed once (ruff RUF022 keeps it sorted)."""
        module = importlib.import_module(package)
        assert len(set(module.__all__)) == len(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name

    def test_layers_point_one_way(self) -> None:
        """events imports nothing of ours; bus only events; actors and saga never each other
        or the composition root."""
        import ast
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        allowed = {
            "events": {"events"},
            "bus": {"events", "bus"},
            "actors": {"events", "bus", "actors"},
            "saga": {"events", "bus", "saga"},
        }
        ours = {"events", "bus", "actors", "saga", "service"}
        for package, may in allowed.items():
            for path in (root / package).rglob("*.py"):
                tree = ast.parse(path.read_text())
                for node in ast.walk(tree):
                    names = []
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        names = [node.module]
                    for name in names:
                        top = name.split(".")[0]
                        assert top not in ours or top in may, f"{path} imports {name}"
