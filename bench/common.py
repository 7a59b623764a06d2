"""What the benchmarks share: the machine's description, result files, quiet logging, the
URLs of the local broker and database, and real coordinator/worker processes on them (the
approach of ``tests/distributed/cluster.py``: ``AIAPPS_*`` settings in the environment)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from service.processes import ProcessGroup

RESULTS = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def amqp_url(url: str | None = None) -> str:
    return url or os.environ.get("AIAPPS_BENCH_AMQP_URL") or os.environ.get(
        "AIAPPS_TEST_AMQP_URL", DEFAULT_AMQP_URL
    )


def postgres_url(url: str | None = None) -> str:
    return url or os.environ.get("AIAPPS_BENCH_POSTGRES_URL") or os.environ.get(
        "AIAPPS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL
    )


def quiet_logging() -> None:
    """Warnings and errors only: the services log a line per saga at INFO, and rendering
    those would be measured along with the work."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def machine() -> dict[str, Any]:
    """Where a result was measured: cores, Python, load at the start."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    with contextlib.suppress(OSError):
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    return info


def header(benchmark: str, **params: Any) -> dict[str, Any]:
    """The common head of a result file."""
    return {
        "benchmark": benchmark,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command(),
        "machine": machine(),
        "params": params,
    }


def command() -> str:
    """The command line that is running (``.venv/bin/python -m bench.run --only saga``)."""
    argv = list(sys.argv) or [""]
    script = Path(argv[0])
    if script.suffix == ".py" and script.parent.name == "bench":
        return shlex.join([".venv/bin/python", "-m", f"bench.{script.stem}", *argv[1:]])
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def save(result: dict[str, Any], out_dir: Path | None, name: str) -> dict[str, Any]:
    """Write ``result`` to ``out_dir/<name>-<timestamp>.json`` (its ``path`` is set)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        started = datetime.fromisoformat(str(result["time"]))
        result.setdefault("duration_s", round((datetime.now(UTC) - started).total_seconds()))
    if out_dir is None:
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{name}-{stamp}.json"
    result["path"] = str(path)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


class Processes(ProcessGroup):
    """Coordinator and worker processes (``python -m bench.worker``) on one exchange and one
    schema, with the settings in ``AIAPPS_*`` variables, as the distributed tests start them.
    Logs go to ``tmp/<name>.log``."""

    def __init__(self, tmp: Path, amqp: str, store: str, **settings: str) -> None:
        super().__init__(tmp, amqp, store, prefix="bench", module="bench.worker",
                         **{"AIAPPS_LOG_LEVEL": "WARNING", **settings})
