"""A CPU-bound image analyzer for the scale-out benchmark.

Each call burns a fixed amount of *CPU time* of its thread (``ms`` milliseconds, measured
with :func:`time.thread_time`) in pure Python, holding the GIL and the event loop, as local
inference does. CPU time, not wall time: when several workers share fewer cores, each call
takes longer on the clock but costs the same work, so throughput can only grow with cores.
"""

from __future__ import annotations

import time

from actors.capabilities import ImageAnalysis
from events.common import ProviderInfo, Usage

CPU = ProviderInfo(name="bench-cpu", model="burn")


def burn(seconds: float) -> int:
    """Spin until this thread has used ``seconds`` of CPU; returns the loop count."""
    start = time.thread_time()
    spins = 0
    while time.thread_time() - start < seconds:
        total = 0
        for i in range(500):
            total += i * i
        spins += 1
    return spins


class CpuBoundAnalyzer:
    """An :class:`~actors.capabilities.ImageAnalyzer` whose every call costs ``ms`` ms of CPU."""

    def __init__(self, ms: float = 20.0) -> None:
        if ms < 0:
            raise ValueError("ms must be >= 0")
        self.ms = ms
        self.calls = 0

    async def analyze(
        self, image: bytes, media_type: str, features: tuple[str, ...]
    ) -> ImageAnalysis:
        self.calls += 1
        burn(self.ms / 1000)
        return ImageAnalysis(
            CPU, caption=f"{len(image)} bytes of {media_type}", tags=("bench",),
            usage=Usage(transactions=1),
        )
