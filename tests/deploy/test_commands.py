"""Every command the deployment runs exists in the CLI and accepts the flags given: the
Dockerfile's CMD and HEALTHCHECK, the compose file's commands and health checks, and every
container command, exec probe and lifecycle hook of the Kubernetes manifests (as written and as
rendered). Each is parsed by the real click command behind ``ai-apps`` (so an unknown option or
a bad value fails) and its ``--help`` is invoked."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import typer
from typer.testing import CliRunner

from service.cli import app
from tests.deploy.manifests import (
    BASE,
    KUBERNETES,
    OVERLAYS,
    compose_commands,
    dockerfile_commands,
    kubernetes_commands,
    load_all,
    manifest_files,
    render,
)

OTHER_PROGRAMS = {"sleep"}
"""Programs besides ai-apps that our image runs (coreutils' sleep, for the gateway's preStop)."""

MISSING = {
    "serve": "`ai-apps serve` is not registered on service.cli.app: the HTTP gateway "
             "(service/gateway_cli.py, issue 6) has not landed yet. The Dockerfile's CMD, the "
             "gateway Deployment and the compose gateway run it.",
    "ping": "`ai-apps ping` is not registered on service.cli.app: add "
            "`from service import health_cli; health_cli.register(app)` to _register_extensions() "
            "in service/cli.py. The image's HEALTHCHECK, the compose health checks and the "
            "worker and coordinator readiness probes run it.",
}


def check(argv: list[str]) -> str | None:
    """None when ``argv`` is a valid ai-apps invocation, else what is wrong."""
    if not argv:
        return "empty command"
    if argv[0] != "ai-apps":
        return None if argv[0] in OTHER_PROGRAMS else f"{argv[0]!r} is not a program of the image"
    # typer's (vendored) click objects: a group has `commands`, a command `make_context`
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(argv[1:])
    while hasattr(command, "commands"):
        if not rest or rest[0].startswith("-"):
            return f"{' '.join(argv)}: no subcommand"
        found = command.commands.get(rest[0])
        if found is None:
            return MISSING.get(rest[0], f"{' '.join(argv)}: ai-apps has no command {rest[0]!r}")
        path.append(rest.pop(0))
        command = found
    try:
        with command.make_context(path[-1], list(rest)):
            pass
    except Exception as exc:  # click's UsageError / BadParameter, whichever click it is
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return f"{' '.join(argv)}: {message}"
    result = CliRunner().invoke(app, [*path, "--help"])
    if result.exit_code != 0:
        return f"ai-apps {' '.join(path)} --help exited {result.exit_code}: {result.output}"
    return None


def problems(commands: Iterable[tuple[str, list[str]]]) -> str:
    """Each problem once, with the places that run the command; empty when all is well."""
    places: dict[str, list[str]] = {}
    found = False
    for where, argv in commands:
        found = True
        problem = check(argv)
        if problem:
            places.setdefault(problem, []).append(where)
    assert found, "no command found: the parser is out of step with the files"
    return "\n".join(
        f"{problem}\n    run by: " + "; ".join(dict.fromkeys(wheres))
        for problem, wheres in places.items()
    )


class TestCommandsExist:
    def test_the_checker_catches_what_it_must(self) -> None:
        assert check(["ai-apps", "worker", "--actors", "vision"]) is None
        assert check(["ai-apps", "dlq", "list", "--json"]) is None
        assert check(["ai-apps", "worker", "--actor", "vision"]) is not None
        assert check(["ai-apps", "coordinator", "--port", "1"]) is not None
        assert check(["ai-apps", "workers"]) is not None
        assert check(["python", "-m", "service.cli"]) is not None

    def test_dockerfile(self) -> None:
        found = problems(dockerfile_commands())
        assert not found, found

    def test_compose(self) -> None:
        found = problems(compose_commands())
        assert not found, found

    def test_kubernetes_manifests(self) -> None:
        commands: list[tuple[str, list[str]]] = []
        for path in manifest_files():
            commands += kubernetes_commands(load_all(path), str(path.relative_to(KUBERNETES)))
        commands += kubernetes_commands(render(BASE), "base")
        for name, overlay in OVERLAYS.items():
            commands += kubernetes_commands(render(overlay), name)
        found = problems(commands)
        assert not found, found
