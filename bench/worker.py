"""One role of a distributed deployment, for the benchmarks that need real processes::

    python -m bench.worker --coordinator                      # coordinator + event recorder
    python -m bench.worker --actors all --latency 0.05        # every actor, fakes of 50 ms
    python -m bench.worker --actors vision --cpu-ms 20        # a CPU-bound vision actor

Bus, store, exchange, schema, blobs and concurrency come from the ``AIAPPS_*`` environment, as
for ``ai-apps worker``; what differs is the providers: fakes with a fixed latency that detect
``--language`` (so a Spanish inquiry runs every step of the support workflow), or
:class:`~bench.cpu_provider.CpuBoundAnalyzer` for vision. Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from actors.providers.fake import FakeProviders
from actors.services import SERVICES


def fake_providers(
    latency: float, language: str = "es", ocr_text: str = "PEDIDO ORD-2024-58317"
) -> FakeProviders:
    """One fake per capability, each sleeping ``latency`` seconds per call; the language
    detector answers ``language`` and the image analyzer reads ``ocr_text``."""
    fakes = FakeProviders()
    fakes.language.language = language
    fakes.vision.ocr_text = ocr_text
    for behaviour in fakes.behaviours().values():
        behaviour.latency = latency
    return fakes


def provider_map(fakes: FakeProviders, cpu_ms: float | None = None) -> dict[str, Any]:
    """The ``providers=`` argument of :class:`~service.wiring.Service`."""
    providers: dict[str, Any] = {
        "language": fakes.language, "vision": fakes.vision, "translation": fakes.translation,
        "responder": fakes.responder, "speech": fakes.speech,
    }
    if cpu_ms is not None:
        from bench.cpu_provider import CpuBoundAnalyzer

        providers["vision"] = CpuBoundAnalyzer(ms=cpu_ms)
    return providers


async def serve(args: argparse.Namespace) -> None:
    from service.logs import configure_logging
    from service.settings import Settings
    from service.wiring import Service

    settings = Settings()
    configure_logging(settings)
    if args.actors in ("", "none"):
        actors: list[str] = []
    elif args.actors == "all":
        actors = list(SERVICES)
    else:
        actors = [a.strip() for a in args.actors.split(",") if a.strip()]
    providers = provider_map(fake_providers(args.latency, args.language), args.cpu_ms)
    svc = Service(settings, coordinator=args.coordinator, actors=actors, providers=providers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with svc:
        print(f"bench.worker up: coordinator={args.coordinator} actors={actors}",
              file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", action="store_true", help="run the coordinator")
    parser.add_argument("--actors", default="none",
                        help="comma-separated actors, 'all' or 'none' (default)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per fake call")
    parser.add_argument("--language", default="es", help="what the fake detector answers")
    parser.add_argument("--cpu-ms", type=float, default=None,
                        help="vision burns this many ms of CPU per call instead of the fake")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
