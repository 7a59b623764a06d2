"""Offline machine translation with Apertium, Debian's rule-based translator.

No PyPI package ships translation models, so this adapter runs the ``apertium`` command
(``apertium -u <mode>``, text on stdin) from the Debian packages installed by
``scripts/system-packages.sh``. Apertium names its modes with a mix of ISO 639-1 and 639-3
codes (``eng-spa``, ``es-fr``, ``fr-es``, ``spa-ita``); this module maps them to ISO 639-1.

When no direct pair exists the text goes through Spanish, the hub of Apertium's Romance and
English pairs: English to French is ``eng-spa`` then ``es-fr``. Each hop loses some quality;
rule-based output is literal but it keeps names, numbers and order codes intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from dataclasses import dataclass

from actors.capabilities import Translation
from actors.errors import PermanentError, TransientError, UnsupportedError
from events.common import ProviderInfo, Usage

__all__ = ["APT_PACKAGES", "ApertiumTranslator", "iso639_1"]

_PROVIDER = "local"
_PIVOT = "es"

APT_PACKAGES = ("apertium", "apertium-eng-spa", "apertium-fr-es")
"""The Debian packages for the minimum useful set: en↔es, es↔fr and, through Spanish, en↔fr.
``scripts/system-packages.sh`` installs these plus a few more small pairs."""

_INSTALL = f"apt-get install {' '.join(APT_PACKAGES)}"

# Apertium's ISO 639-3 (and a few 639-2/B) codes -> ISO 639-1. Codes with no 639-1 form
# (ast, frp, szl, hbs, ...) are kept as they are.
_TO_ISO1 = {
    "afr": "af", "arg": "an", "bel": "be", "bre": "br", "bul": "bg", "cat": "ca", "dan": "da",
    "deu": "de", "eng": "en", "epo": "eo", "eus": "eu", "fra": "fr", "glg": "gl", "hin": "hi",
    "ind": "id", "isl": "is", "ita": "it", "mkd": "mk", "nld": "nl", "nno": "nn", "nob": "nb",
    "nor": "no", "oci": "oc", "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru", "spa": "es",
    "srd": "sc", "swe": "sv", "ukr": "uk", "urd": "ur", "zlm": "ms", "fre": "fr", "ger": "de",
}  # fmt: skip

# Debian 12 packages of Apertium language pairs, by the (unordered) ISO pair they translate,
# so that an "unsupported pair" error can name the package that would add it.
_DEBIAN_PACKAGES = {
    frozenset(("en", "es")): "apertium-eng-spa",
    frozenset(("en", "ca")): "apertium-eng-cat",
    frozenset(("en", "gl")): "apertium-en-gl",
    frozenset(("en", "eo")): "apertium-eo-en",
    frozenset(("en", "eu")): "apertium-eu-en",
    frozenset(("en", "is")): "apertium-isl-eng",
    frozenset(("en", "mk")): "apertium-mkd-eng",
    frozenset(("es", "fr")): "apertium-fr-es",
    frozenset(("es", "ca")): "apertium-spa-cat",
    frozenset(("es", "pt")): "apertium-es-pt",
    frozenset(("es", "it")): "apertium-spa-ita",
    frozenset(("es", "gl")): "apertium-es-gl",
    frozenset(("es", "ro")): "apertium-es-ro",
    frozenset(("es", "eu")): "apertium-eu-es",
    frozenset(("es", "oc")): "apertium-oc-es",
    frozenset(("es", "an")): "apertium-spa-arg",
    frozenset(("es", "ast")): "apertium-spa-ast",
    frozenset(("es", "eo")): "apertium-eo-es",
    frozenset(("fr", "ca")): "apertium-fra-cat",
    frozenset(("fr", "oc")): "apertium-oci-fra",
    frozenset(("fr", "br")): "apertium-br-fr",
    frozenset(("fr", "eo")): "apertium-eo-fr",
    frozenset(("ca", "it")): "apertium-cat-ita",
    frozenset(("ca", "oc")): "apertium-oc-ca",
    frozenset(("ca", "pt")): "apertium-por-cat",
    frozenset(("ca", "eo")): "apertium-eo-ca",
    frozenset(("pt", "gl")): "apertium-pt-gl",
    frozenset(("af", "nl")): "apertium-afr-nld",
    frozenset(("nb", "nn")): "apertium-nno-nob",
    frozenset(("sv", "da")): "apertium-swe-dan",
    frozenset(("da", "no")): "apertium-dan-nor",
    frozenset(("sv", "no")): "apertium-swe-nor",
    frozenset(("is", "sv")): "apertium-isl-swe",
    frozenset(("ru", "uk")): "apertium-rus-ukr",
    frozenset(("be", "ru")): "apertium-bel-rus",
    frozenset(("mk", "bg")): "apertium-mkd-bul",
    frozenset(("id", "ms")): "apertium-ind-zlm",
    frozenset(("ur", "hi")): "apertium-urd-hin",
}

# A plain pair mode: "eng-spa", "es-fr". Variants ("spa-eng_US", "eng-cat_valencia") and
# helper modes ("eco-es-fr") are not language pairs of their own.
_MODE = re.compile(r"^([a-z]{2,3})-([a-z]{2,3})$")
_SPACES = re.compile(r"(?<=\S) {2,}(?=\S)")
# How long `apertium -l` may take; it only lists files.
_LIST_TIMEOUT = 10.0


def iso639_1(code: str) -> str:
    """``"en"``, ``"EN"``, ``"en-US"``, ``"eng"`` -> ``"en"``; unknown 3-letter codes stay."""
    primary = re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]
    return _TO_ISO1.get(primary, primary)


@dataclass(frozen=True, slots=True)
class _Route:
    modes: tuple[str, ...]
    """The Apertium modes to run in order: one for a direct pair, two through the pivot."""


class ApertiumTranslator:
    """:class:`~actors.capabilities.Translator` backed by the Debian ``apertium`` command.

    ``executable`` is the command (or a path to it); ``timeout`` bounds each Apertium run
    in seconds. The installed pairs are discovered once, with ``apertium -l``, on first use.
    """

    def __init__(self, *, executable: str = "apertium", timeout: float = 30.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._executable = executable
        self._timeout = timeout
        self._pairs: dict[tuple[str, str], str] | None = None

    async def pairs(self) -> dict[tuple[str, str], str]:
        """The installed direct pairs: ``(from, to)`` in ISO 639-1 -> the Apertium mode."""
        # No lock: two first calls racing both run `apertium -l` (a few ms) and agree, and an
        # asyncio.Lock would tie the translator to one event loop.
        if self._pairs is None:
            self._pairs = await self._discover()
        return dict(self._pairs)

    async def translate(self, text: str, to_language: str, from_language: str | None = None) -> Translation:
        if from_language is None:
            raise PermanentError(
                "Apertium needs the source language; detect it first (language detection is a separate step)",
                provider=_PROVIDER,
            )
        source, target = iso639_1(from_language), iso639_1(to_language)
        if source == target or not text.strip():
            # Nothing to translate, so nothing was consumed either.
            return Translation(
                text=text,
                from_language=source,
                to_language=target,
                provider=ProviderInfo(name=_PROVIDER, model="apertium"),
            )
        route = await self._route(source, target)
        result = text
        for mode in route.modes:
            result = await self._run(mode, result)
        return Translation(
            text=result,
            from_language=source,
            to_language=target,
            provider=ProviderInfo(name=_PROVIDER, model=f"apertium {'+'.join(route.modes)}"),
            usage=Usage(characters=len(text)),
        )

    # -- internals -------------------------------------------------------------------------

    async def _route(self, source: str, target: str) -> _Route:
        pairs = await self.pairs()
        direct = pairs.get((source, target))
        if direct is not None:
            return _Route((direct,))
        first, second = pairs.get((source, _PIVOT)), pairs.get((_PIVOT, target))
        if first is not None and second is not None:
            return _Route((first, second))
        raise UnsupportedError(_unsupported_message(source, target, pairs), provider=_PROVIDER)

    async def _discover(self) -> dict[tuple[str, str], str]:
        stdout = await self._exec(["-l"], None, _LIST_TIMEOUT, what="listing the pairs")
        pairs: dict[tuple[str, str], str] = {}
        for line in stdout.splitlines():
            match = _MODE.match(line.strip())
            if match is None:
                continue
            key = (iso639_1(match.group(1)), iso639_1(match.group(2)))
            # Two modes can name the same pair (a transitional 2-letter alias and the
            # 3-letter one); keep the first, they run the same data.
            pairs.setdefault(key, line.strip())
        return pairs

    async def _run(self, mode: str, text: str) -> str:
        # -u: no "*" marks on unknown words; they are passed through unchanged instead.
        output = await self._exec(["-u", mode], text, self._timeout, what=f"translating ({mode})")
        # Apertium keeps the text's own line breaks but may add one at the end.
        if not text.endswith("\n") and output.endswith("\n"):
            output = output[:-1]
        # A dropped word leaves two spaces behind ("has moved  to"); tidy them unless the
        # customer's text had runs of spaces of its own (tables, aligned receipts).
        if "  " not in text:
            output = _SPACES.sub(" ", output)
        return output

    async def _exec(self, args: list[str], stdin: str | None, time_limit: float, *, what: str) -> str:
        executable = shutil.which(self._executable)
        if executable is None:
            raise UnsupportedError(
                f"the apertium command is not installed ({self._executable!r} not found on "
                f"PATH): {_INSTALL} (or run scripts/system-packages.sh)",
                provider=_PROVIDER,
            )
        try:
            process = await asyncio.create_subprocess_exec(
                executable,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TransientError(f"could not start apertium: {exc}", provider=_PROVIDER) from exc
        data = stdin.encode("utf-8") if stdin is not None else None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(data), time_limit)
        except TimeoutError as exc:
            await _kill(process)
            raise TransientError(
                f"apertium timed out after {time_limit:g} s {what}", provider=_PROVIDER
            ) from exc
        except asyncio.CancelledError:
            await _kill(process)
            raise
        if process.returncode != 0:
            detail = stderr.decode("utf-8", "replace").strip().splitlines()
            raise TransientError(
                f"apertium failed {what} (exit {process.returncode}): "
                f"{detail[0] if detail else 'no error output'}",
                provider=_PROVIDER,
            )
        return stdout.decode("utf-8", "replace")


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    # Reap it, so that no zombie (or "Event loop is closed" warning) is left behind.
    await process.wait()


def _unsupported_message(source: str, target: str, pairs: dict[tuple[str, str], str]) -> str:
    available = ", ".join(f"{a}→{b}" for a, b in sorted(pairs)) or "none"
    message = (
        f"Apertium cannot translate {source}→{target} here (no direct pair and none through "
        f"{_PIVOT}). Installed pairs: {available}."
    )
    wanted = _packages_for(source, target, pairs)
    if wanted:
        message += f" To add it: apt-get install {' '.join(wanted)}."
    else:
        message += f" Debian has no Apertium package for {source}↔{target}."
    return message


def _packages_for(source: str, target: str, pairs: dict[tuple[str, str], str]) -> list[str]:
    """The Debian packages that would make ``source -> target`` work: the direct pair when
    Debian has one, else the missing legs through the pivot."""
    direct = _DEBIAN_PACKAGES.get(frozenset((source, target)))
    if direct is not None:
        return [direct]
    needed = []
    for leg in ((source, _PIVOT), (_PIVOT, target)):
        if leg in pairs:
            continue
        package = _DEBIAN_PACKAGES.get(frozenset(leg))
        if package is None:
            return []
        needed.append(package)
    return needed
