"""Peak memory of a piece of work, as the growth of this process's resident set during it.

On Linux the kernel keeps a high-water mark of the resident set (VmHWM) that can be reset
(`/proc/self/clear_refs`, "5"), so the peak during a `with PeakMemory()` block is exact and
not hidden by whatever was loaded before it; free heap memory is returned to the OS first
(glibc `malloc_trim`), so reused free space does not hide the growth either. Elsewhere the
growth of the current resident set is sampled at exit only (a lower bound), and `exact` says so.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from types import TracebackType

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_resident_mb() -> float:
    """This process's peak resident set so far (MiB): the kernel's high-water mark on Linux,
    the current resident set elsewhere."""
    high = _status_kib("VmHWM")
    return high / 1024 if high is not None else psutil.Process().memory_info().rss / 2**20


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _return_free_heap() -> None:
    """Give memory freed earlier back to the OS (glibc), so growth is measured from what is in
    use rather than hidden by a heap that already holds free space."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """`with PeakMemory() as peak: ...` then `peak.mb`: resident-set growth at its peak (MiB)."""

    def __init__(self) -> None:
        self.mb = 0.0
        self.exact = False
        self._before = 0

    def __enter__(self) -> PeakMemory:
        _return_free_heap()
        self.exact = _reset_high_water_mark() and _status_kib("VmHWM") is not None
        self._before = psutil.Process().memory_info().rss
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        high = _status_kib("VmHWM") if self.exact else None
        peak = high * 1024 if high is not None else psutil.Process().memory_info().rss
        self.mb = max(peak - self._before, 0) / 2**20
