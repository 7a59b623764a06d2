"""Every benchmark runs (at a tiny size; no timing is asserted), and the report builds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import hop, inflight, run, saga_overhead, scaleout, telemetry
from bench.cpu_provider import CpuBoundAnalyzer, burn
from saga.workflows.support import support_workflow


def _load(path: str) -> dict[str, object]:
    with open(path) as f:
        loaded: dict[str, object] = json.load(f)
    return loaded


async def _broker() -> str:
    import aio_pika

    from tests.test_transport_rabbitmq import amqp_url, broker_required

    try:
        async with await aio_pika.connect(amqp_url(), timeout=5):
            pass
    except Exception as exc:
        if broker_required():
            raise  # a missing broker is a failure, loudly
        pytest.skip(f"no RabbitMQ: {exc!r}")
    return amqp_url()


async def _database() -> str:
    import asyncpg

    given = os.environ.get("AIAPPS_TEST_POSTGRES_URL")
    if not given and os.environ.get("CI"):
        pytest.fail("AIAPPS_TEST_POSTGRES_URL must be set in CI")
    url = given or "postgresql://postgres@127.0.0.1:5432/test"
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if given or os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL: {exc!r}")
    await conn.close()
    return url


# -- hop ----------------------------------------------------------------------------------------


async def test_memory_hop_runs(tmp_path: Path) -> None:
    result = await hop.run(n=20, rounds=1, only="memory", out_dir=tmp_path, quiet=True)
    memory = result["comparisons"]["memory"]
    assert memory["ours"]["median"] > 0
    assert memory["baseline"]["median"] > 0
    assert "rabbitmq" not in result["comparisons"]
    saved = _load(result["path"])
    assert saved["comparisons"]["memory"]["ratio"] == memory["ratio"]  # type: ignore[index]
    assert "| memory |" in hop.table(result)


@pytest.mark.rabbitmq
async def test_rabbitmq_hop_runs(tmp_path: Path) -> None:
    url = await _broker()
    result = await hop.run(n=20, rounds=1, only="rabbitmq", url=url, out_dir=tmp_path, quiet=True)
    rabbit = result["comparisons"]["rabbitmq"]
    assert rabbit["ours"]["median"] > 0
    assert rabbit["baseline"]["median"] > 0
    assert "| rabbitmq |" in hop.table(result)


# -- telemetry ----------------------------------------------------------------------------------


async def test_telemetry_overhead_runs(tmp_path: Path) -> None:
    """Off, on without an exporter and on with one, each against off; the table builds."""
    result = await telemetry.run(n=20, rounds=1, out_dir=tmp_path, quiet=True)
    variants = result["variants"]
    assert list(variants) == ["off", "on", "exporter"]
    assert variants["off"]["paired_ratio_median"] == 1.0
    for v in variants.values():
        assert v["median"] > 0
        assert v["cpu_us_per_event_median"] > 0
    saved = _load(result["path"])
    assert saved["variants"]["on"]["median"] == variants["on"]["median"]  # type: ignore[index]
    assert "| on, in-memory span exporter |" in telemetry.table(result)


def test_cli_arguments() -> None:
    with pytest.raises(SystemExit):
        hop.main(["--only", "nothing"])


# -- saga overhead ------------------------------------------------------------------------------


def test_critical_path_comes_from_the_workflow_definition() -> None:
    workflow = support_workflow()
    every = {s.name: 1 for s in workflow.steps}
    total, chain = saga_overhead.critical_path(workflow, 0.05, every)
    assert chain == ["detect_language", "translate_in", "respond", "translate_out",
                     "synthesize_voice"]
    assert total == pytest.approx(0.25)
    # a slow vision service moves the critical path onto the image branch
    slow_vision = {"vision": 0.5, "language": 0.05, "translation": 0.05, "responder": 0.05,
                   "speech": 0.05}
    total, chain = saga_overhead.critical_path(workflow, slow_vision, every)
    assert chain[0] == "analyze_image"
    assert total == pytest.approx(0.65)
    # steps that did not run weigh nothing: an English inquiry without image or voice
    total, chain = saga_overhead.critical_path(
        workflow, 0.05, {"detect_language": 1, "respond": 1}
    )
    assert chain == ["detect_language", "respond"]
    assert total == pytest.approx(0.1)


async def test_saga_overhead_runs_in_process(tmp_path: Path) -> None:
    result = await saga_overhead.run(
        n=2, latency=0.01, only=["memory", "sqlite"], warmup=1, out_dir=tmp_path, quiet=True
    )
    workflow = result["workflow"]
    assert set(workflow["steps_run"]) == {s.name for s in support_workflow().steps}
    assert workflow["critical_path_ms"] == pytest.approx(50.0)
    assert set(result["variants"]) == {"memory", "sqlite"}
    for variant in result["variants"].values():
        assert variant["n"] == 2
        assert variant["p50_ms"] > 0
        assert isinstance(variant["goal_met"], bool)
    assert _load(result["path"])["benchmark"] == "saga"
    assert "| sqlite |" in saga_overhead.table(result)


@pytest.mark.rabbitmq
@pytest.mark.postgres
async def test_saga_overhead_runs_on_rabbitmq_and_postgres(tmp_path: Path) -> None:
    amqp, postgres = await _broker(), await _database()
    result = await saga_overhead.run(
        n=2, latency=0.01, only=["rabbitmq"], warmup=1, amqp=amqp, postgres=postgres,
        out_dir=tmp_path, quiet=True,
    )
    rabbit = result["variants"]["rabbitmq"]
    assert rabbit["n"] == 2
    assert rabbit["durable_floor"]["floor_ms"] > 0
    assert "| rabbitmq |" in saga_overhead.table(result)


def test_saga_cli_arguments() -> None:
    with pytest.raises(SystemExit):
        saga_overhead.main(["--only", "nothing"])


# -- sagas in flight ----------------------------------------------------------------------------


async def test_inflight_runs(tmp_path: Path) -> None:
    result = await inflight.run(n=20, latency=0.05, out_dir=tmp_path, quiet=True)
    assert result["finish"]["outcomes"] == {"completed": 20}
    assert result["finish"]["ideal_s"] == pytest.approx(0.25)
    assert result["params"]["actor_concurrency"] == 20
    assert result["memory"]["in_flight_max"] > 0
    store = result["store"]
    assert store["write_statements_per_saga"] > 0
    assert store["rows_changed_per_saga"] > 0
    assert store["commits_per_saga"] > 0
    assert store["events_stored_per_saga"] >= 13  # start, 2 x 6 steps, the terminal event
    assert _load(result["path"])["benchmark"] == "inflight"
    assert "| SQLite |" in inflight.table(result)


# -- scale-out ----------------------------------------------------------------------------------


async def test_cpu_provider_burns_cpu_not_wall_time() -> None:
    assert burn(0.002) > 0
    analyzer = CpuBoundAnalyzer(ms=1)
    found = await analyzer.analyze(b"image", "image/png", ("caption",))
    assert found.provider.name == "bench-cpu"
    assert analyzer.calls == 1
    with pytest.raises(ValueError, match="ms"):
        CpuBoundAnalyzer(ms=-1)


@pytest.mark.rabbitmq
async def test_scaleout_runs(tmp_path: Path) -> None:
    amqp = await _broker()
    result = await scaleout.run(
        n=8, cpu_ms=2, workers=(1, 2), rounds=1, store="memory", amqp=amqp, out_dir=tmp_path,
        quiet=True,
    )
    assert set(result["workers"]) == {"1", "2"}
    assert result["workers"]["1"]["ratio_vs_1"] == pytest.approx(1.0)
    assert result["workers"]["2"]["throughput_median"] > 0
    assert result["workers"]["2"]["failed"] == 0
    assert "| 2 |" in scaleout.table(result)


def test_scaleout_cli_arguments() -> None:
    with pytest.raises(SystemExit):
        scaleout.main(["--workers", "0"])


# -- the runner and its report ------------------------------------------------------------------


def test_runner_parts() -> None:
    assert run.parse_only(None) == list(run.PARTS)
    assert run.parse_only(["saga,hop"]) == ["hop", "saga"]
    with pytest.raises(ValueError, match="unknown"):
        run.parse_only(["nothing"])
    with pytest.raises(SystemExit):
        run.main(["--only", "nothing"])


async def test_report_builds_from_results(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    await hop.run(n=20, rounds=1, only="memory", out_dir=results, quiet=True)
    await saga_overhead.run(n=2, latency=0.01, only=["memory"], warmup=1, out_dir=results,
                            quiet=True)
    await inflight.run(n=10, latency=0.02, out_dir=results, quiet=True)
    await telemetry.run(n=10, rounds=1, out_dir=results, quiet=True)
    report = run.build_report(results, tmp_path / "docs", invoked="pytest")
    text = report.read_text()
    for heading in ("## Headline", "## Reading the noise", "## 1. Hop throughput",
                    "## 2. Saga overhead", "## 3. Sagas in flight", "## 5. Telemetry overhead"):
        assert heading in text
    assert "| telemetry, in-process hop |" in text
    assert "Not run yet" in text  # scale-out has no result here
    assert "### Beyond one machine" not in text
    for plot in ("hop.png", "saga.png", "inflight.png", "telemetry.png"):
        assert (tmp_path / "docs" / plot).stat().st_size > 0
        assert f"]({plot})" in text
