"""Restarting the broker under test, for the opt-in broker-restart tests, and only that
broker: ``rabbitmqctl`` talks to the node its environment names (``RABBITMQ_NODENAME``…,
which ``scripts/scratch-broker.sh`` exports), not to the URL the tests use, so before it
stops anything the node it would stop must be local and listen on the URL's port. A mismatch
(a remote broker, or the scratch node's URL without its exports, which would stop the shared
broker on 5672) skips the test with the reason; in CI, which asks for the restarts and owns a
local broker, it fails the test instead, so a restart test never quietly does not run."""

from __future__ import annotations

import asyncio
import os
import re
import shutil

import pytest
from yarl import URL

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _cannot(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI asked for the broker-restart tests, but {reason}")
    pytest.skip(reason)


async def require_restartable(url: str) -> None:
    """Skip unless restarts were asked for (``AIAPPS_TEST_RESTART_BROKER=1``) and
    ``rabbitmqctl`` would restart the very broker at ``url``."""
    if not os.environ.get("AIAPPS_TEST_RESTART_BROKER"):
        pytest.skip("restarts the broker: set AIAPPS_TEST_RESTART_BROKER=1 (a scratch broker: "
                    "source scripts/scratch-broker.sh)")
    if shutil.which("rabbitmqctl") is None or shutil.which("rabbitmq-diagnostics") is None:
        _cannot("rabbitmqctl is not available")
    parsed = URL(url)
    if parsed.host not in LOCAL_HOSTS:
        _cannot(f"refusing to restart {parsed.host}: rabbitmqctl restarts a local node only")
    port = parsed.port or 5672
    code, listeners = await _run("rabbitmq-diagnostics", "-q", "listeners")
    ports = {int(p) for p in re.findall(r"port: (\d+), protocol: amqp\b", listeners)}
    if code != 0 or port not in ports:
        node = os.environ.get("RABBITMQ_NODENAME", "the default node")
        _cannot(f"rabbitmqctl talks to {node}, whose AMQP ports are {sorted(ports)}, not "
                f"{port}: export the node's RABBITMQ_* (source scripts/scratch-broker.sh)")


async def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl ARGS`` (after :func:`require_restartable`); a failure fails the test."""
    code, out = await _run("rabbitmqctl", *args)
    assert code == 0, out
