"""The local stack (deploy/compose.yaml): it parses, its references resolve (services, health
checks behind `service_healthy`, volumes, files, URLs between containers), the roles come from
our Dockerfile with a grace period that covers in-flight messages, and the OpenTelemetry
collector's pipelines are complete. ``docker compose config`` checks it against the Compose
Specification where a Compose v2 CLI is installed (it needs no Docker engine)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]

from actors.services import SERVICES
from tests.deploy.manifests import (
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    compose,
    is_our_image,
    seconds,
    transport_grace,
)

GRACE = transport_grace()
"""How long a stopping role lets in-flight handlers finish."""


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def roles() -> dict[str, Any]:
    return {name: s for name, s in services().items() if is_our_image(s)}


def compose_cli() -> list[str] | None:
    """A Compose v2 CLI: the docker plugin or a standalone docker-compose 2.x."""
    if shutil.which("docker"):
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        done = subprocess.run(["docker-compose", "version"], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode == 0 and "v2." in done.stdout:
            return ["docker-compose"]
    return None


class TestStack:
    def test_has_the_infrastructure_and_the_roles(self) -> None:
        images = {name: s.get("image", "") for name, s in services().items()}
        assert "management" in images["rabbitmq"]
        assert images["postgres"].startswith("postgres:")
        assert images["redis"].startswith("redis:")
        assert "opentelemetry-collector" in images["otel-collector"]
        assert images["jaeger"].startswith("jaegertracing/")
        commands = {name: s["command"] for name, s in roles().items()}
        assert commands["coordinator"] == ["ai-apps", "coordinator"]
        assert commands["gateway"][:2] == ["ai-apps", "serve"]
        served = [a for c in commands.values() if c[:2] == ["ai-apps", "worker"]
                  for a in c[c.index("--actors") + 1].split(",")]
        assert sorted(served) == sorted(SERVICES)

    def test_dependencies_resolve(self) -> None:
        """Every depends_on names a service; `service_healthy` ones have a health check."""
        all_services = services()
        for name, service in all_services.items():
            for target, condition in (service.get("depends_on") or {}).items():
                assert target in all_services, f"{name} depends on unknown {target}"
                if condition["condition"] == "service_healthy":
                    assert "healthcheck" in all_services[target], f"{name} waits on {target}"
        for name in roles():
            assert "healthcheck" in all_services[name], name

    def test_roles_are_built_from_our_dockerfile_with_the_offline_providers(self) -> None:
        for name, service in roles().items():
            build = service["build"]
            assert (DEPLOY / build["context"]).resolve() / build["dockerfile"] == DOCKERFILE, name
            extras = build["args"]["EXTRAS"].split(",")
            assert {"rabbitmq", "postgres", "local"} <= set(extras), name

    def test_grace_period_covers_in_flight_messages(self) -> None:
        """compose SIGKILLs 10 s after SIGTERM unless told otherwise."""
        for name, service in roles().items():
            assert seconds(service["stop_grace_period"]) >= GRACE + 10, name

    def test_urls_between_containers_point_at_services(self) -> None:
        all_services = services()
        for name, service in roles().items():
            env = service["environment"]
            assert urlsplit(env["AIAPPS_BUS"]).hostname == "rabbitmq", name
            assert urlsplit(env["AIAPPS_STORE"]).hostname == "postgres", name
            assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname in all_services, name
            assert env["OTEL_SERVICE_NAME"], name

    def test_volumes_and_files_exist(self) -> None:
        declared = set(compose().get("volumes") or {})
        for name, service in services().items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    assert (DEPLOY / source).exists(), f"{name}: {source}"
                else:
                    assert source in declared, f"{name}: volume {source} is not declared"

    def test_no_secret_is_written_in_the_file(self) -> None:
        """Only the local stack's throwaway credentials; keys go in the git-ignored .env."""
        text = COMPOSE.read_text()
        for word in ("KEY=", "API_KEY", "SharedAccessKey"):
            assert word not in text


class TestOtelCollector:
    def test_pipelines_use_defined_components(self) -> None:
        config = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
        pipelines = config["service"]["pipelines"]
        assert {"traces", "metrics"} <= set(pipelines)
        for pipeline in pipelines.values():
            for part in ("receivers", "processors", "exporters"):
                for component in pipeline.get(part, []):
                    assert component in config[part], component
        for extension in config["service"].get("extensions", []):
            assert extension in config["extensions"]
        jaeger = config["exporters"]["otlp/jaeger"]["endpoint"]
        assert jaeger.split(":")[0] in services()

    def test_the_collector_gets_this_file(self) -> None:
        mounts = services()["otel-collector"]["volumes"]
        assert any(m.startswith("./otel-collector.yaml:") for m in mounts)


def test_docker_compose_config_accepts_it() -> None:
    """The Compose Specification, checked by Compose itself (no engine needed)."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI here (`docker compose` plugin or docker-compose 2.x); "
                    "the structural tests above still ran")
    done = subprocess.run([*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
