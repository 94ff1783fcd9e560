"""Progress on anything that takes seconds, in a terminal and without one.

In a terminal, `progress` is a tqdm bar. Piped to a file (CI, `nohup`, a scheduler) a bar would
print nothing until the end, so there each bar becomes a log line on the `frozenlm.progress`
logger at a steady interval (`FROZENLM_PROGRESS_SECONDS`, default 30 s) and one when it ends;
a bar done sooner than one interval logs nothing:
`train: 50/150 step [02:10<04:20, 2.61s/step, loss=0.412]`. The CLI shows that logger's INFO
lines; a library user turns them on with `logging.getLogger("frozenlm.progress")`.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger("frozenlm.progress")

DEFAULT_SECONDS = 30.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _LogLines(io.TextIOBase):
    """tqdm's output as log lines (tqdm writes each refresh as '\\r' + status)."""

    def write(self, text: str) -> int:
        line = text.strip("\r\n ")
        if line:
            log.info(line)
        return len(text)

    def flush(self) -> None:
        pass


class _LoggedBar(tqdm):
    """A bar that logs: a new postfix waits for the next interval instead of forcing a line."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = False) -> None:
        super().set_postfix_str(s, refresh=False)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("FROZENLM_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def progress(iterable: Iterable[Any] | None = None, **options: Any) -> Any:
    """A tqdm bar over `iterable` (tqdm's options: total, desc, unit, initial, leave, ...) on a
    terminal; log lines at a steady interval otherwise."""
    if sys.stderr.isatty():
        return tqdm(iterable, **options)
    seconds = _interval()
    options.pop("leave", None)
    return _LoggedBar(
        iterable,
        file=_LogLines(),
        delay=seconds,
        mininterval=seconds,
        maxinterval=max(seconds, 1.0),
        miniters=1,
        ascii=True,
        bar_format=LINE_FORMAT,
        leave=True,
        **options,
    )
