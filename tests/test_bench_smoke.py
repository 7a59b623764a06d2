"""The hop benchmark runs (at a tiny size; no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import hop


async def test_memory_hop_runs(tmp_path: Path) -> None:
    result = await hop.run(n=20, rounds=1, only="memory", out_dir=tmp_path, quiet=True)
    memory = result["comparisons"]["memory"]
    assert memory["ours"]["median"] > 0
    assert memory["baseline"]["median"] > 0
    assert "rabbitmq" not in result["comparisons"]
    with open(result["path"]) as f:  # noqa: ASYNC230 - a test reading a small file
        saved = json.load(f)
    assert saved["comparisons"]["memory"]["ratio"] == memory["ratio"]
    assert "| memory |" in hop.table(result)


@pytest.mark.rabbitmq
async def test_rabbitmq_hop_runs(tmp_path: Path) -> None:
    import aio_pika

    from tests.test_transport_rabbitmq import amqp_url, broker_required

    try:
        async with await aio_pika.connect(amqp_url(), timeout=5):
            pass
    except Exception as exc:
        if broker_required():
            raise  # a missing broker is a failure, loudly
        pytest.skip(f"no RabbitMQ: {exc!r}")
    result = await hop.run(
        n=20, rounds=1, only="rabbitmq", url=amqp_url(), out_dir=tmp_path, quiet=True
    )
    rabbit = result["comparisons"]["rabbitmq"]
    assert rabbit["ours"]["median"] > 0
    assert rabbit["baseline"]["median"] > 0
    assert "| rabbitmq |" in hop.table(result)


def test_cli_arguments() -> None:
    with pytest.raises(SystemExit):
        hop.main(["--only", "nothing"])
