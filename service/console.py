"""The consoles the command line prints to."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPED_WIDTH = 120
"""Columns when the output is not a terminal (a pipe, a file, a CI log) and ``COLUMNS`` is not
set: Rich would take 80, which cuts the timeline's headers and values to ellipses."""


def console(*, stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr): a terminal's own width, ``COLUMNS`` when set,
    else :data:`PIPED_WIDTH`."""
    stream = sys.stderr if stderr else sys.stdout
    tty = getattr(stream, "isatty", lambda: False)()
    width = None if tty or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, width=width)
