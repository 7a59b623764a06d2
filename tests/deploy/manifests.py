"""Reading the deployment files the way their tools do: YAML documents, kustomize renders, the
commands each container, probe and health check runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from service.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = {p.name: p for p in sorted((KUBERNETES / "overlays").iterdir()) if p.is_dir()}
CRDS = KUBERNETES / "crds"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"

Obj = dict[str, Any]


def transport_grace() -> float:
    """Seconds a stopping role lets in-flight handlers finish: ``Settings.shutdown_grace`` once
    that setting exists, else the RabbitMQ transport's built-in default."""
    import inspect

    from bus.rabbitmq import RabbitMQTransport
    from service.settings import Settings

    configured = getattr(Settings(), "shutdown_grace", None)
    if configured is not None:
        return float(configured)
    return float(inspect.signature(RabbitMQTransport).parameters["grace"].default)


def need_tool(name: str, why: str) -> None:
    """Skip when a tool is missing, except in CI, where a missing tool fails the run."""
    message = f"{name} is not installed: {why}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def load_all(path: Path) -> list[Obj]:
    """The non-empty documents of a YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest we ship (kustomizations and CRD copies excluded)."""
    return sorted(
        p for p in KUBERNETES.rglob("*.yaml")
        if p.name != "kustomization.yaml" and CRDS not in p.parents
    )


def kustomize_command() -> list[str] | None:
    """``kustomize build`` or, failing that, kubectl's built-in ``kubectl kustomize``."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@cache
def render(directory: Path) -> tuple[Obj, ...]:
    """The objects ``kustomize build directory`` produces."""
    command = kustomize_command()
    if command is None:
        need_tool("kustomize (or kubectl)", "the kustomizations cannot be rendered")
        raise AssertionError("unreachable")
    done = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} {directory} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def renders() -> dict[str, tuple[Obj, ...]]:
    """The base and every overlay, rendered."""
    return {"base": render(BASE), **{name: render(path) for name, path in OVERLAYS.items()}}


def kind(objects: tuple[Obj, ...] | list[Obj], name: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == name]


def by_name(objects: tuple[Obj, ...] | list[Obj], kind_name: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in kind(objects, kind_name)}


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def actors_of(deployment: Obj) -> list[str]:
    """The actors a worker Deployment runs (``ai-apps worker --actors a,b``); [] otherwise."""
    for container in containers(deployment):
        argv = [*container.get("command", []), *container.get("args", [])]
        if argv[:2] == ["ai-apps", "worker"] and "--actors" in argv:
            return str(argv[argv.index("--actors") + 1]).split(",")
    return []


def kubernetes_commands(objects: tuple[Obj, ...] | list[Obj], where: str) -> Iterator[tuple[str, list[str]]]:
    """Every command a container, an exec probe or a lifecycle hook runs."""
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        for c in containers(obj):
            label = f"{where}: {obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            if "command" in c or "args" in c:
                yield f"{label} command", [*c.get("command", []), *c.get("args", [])]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                exec_ = c.get(probe, {}).get("exec")
                if exec_:
                    yield f"{label} {probe}", list(exec_["command"])
            for hook in ("postStart", "preStop"):
                exec_ = c.get("lifecycle", {}).get(hook, {}).get("exec")
                if exec_:
                    yield f"{label} {hook}", list(exec_["command"])


# -- the Dockerfile ----------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        lines.append((word.upper(), rest.strip()))
    return lines


def exec_form(arguments: str) -> list[str]:
    """The argv of an exec-form (JSON array) CMD/ENTRYPOINT/HEALTHCHECK CMD, or a shell split."""
    arguments = arguments.strip()
    if arguments.startswith("["):
        parsed = yaml.safe_load(arguments)
        assert isinstance(parsed, list), arguments
        return [str(a) for a in parsed]
    return shlex.split(arguments)


def dockerfile_commands() -> Iterator[tuple[str, list[str]]]:
    for instruction, arguments in dockerfile_instructions():
        if instruction == "CMD":
            yield "Dockerfile CMD", exec_form(arguments)
        elif instruction == "HEALTHCHECK" and " CMD " in f" {arguments} ":
            _, _, command = arguments.partition("CMD ")
            yield "Dockerfile HEALTHCHECK", exec_form(command)


def dockerfile_arg_default(name: str) -> str:
    """The default of the first ``ARG name=…``."""
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ARG" and arguments.startswith(f"{name}="):
            return arguments.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"no ARG {name}=… in {DOCKERFILE}")


# -- the compose file --------------------------------------------------------------------------


def compose() -> Obj:
    loaded: Obj = yaml.safe_load(COMPOSE.read_text())
    return loaded


def is_our_image(service: Obj) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile"


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    for name, service in compose()["services"].items():
        if not is_our_image(service):
            continue
        command = service.get("command")
        if command is not None:
            yield f"compose {name} command", command if isinstance(command, list) else shlex.split(command)
        test = service.get("healthcheck", {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            yield f"compose {name} healthcheck", test[1:]
        elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
            yield f"compose {name} healthcheck", shlex.split(test[1])


def seconds(duration: str | int | float) -> float:
    """A compose duration (``45s``, ``1m30s``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total
