"""Atomic writes: a file or a whole folder is built under a temporary name beside its final
place, then renamed into it, so readers see the old complete version or the new one."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from frozenlm.errors import ConfigError, FrozenLMError

log = logging.getLogger(__name__)


def _umask() -> int:
    """The process's umask, read without changing it (Linux reports it; else the usual 022)."""
    status = Path("/proc/self/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one. The file
    gets the mode `open()` would give it (or keeps the mode of the file it replaces), not the
    owner-only mode of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_folder(folder: str | Path, files: Mapping[str, bytes], *, marker: str) -> None:
    """Write `files` (name -> bytes, in order) as the folder `folder`, atomically (see
    `build_folder`)."""

    def write(tmp: Path) -> None:
        for name, data in files.items():
            _write_file(tmp / name, data)

    build_folder(folder, write, marker=marker)


def build_folder(folder: str | Path, build: Callable[[Path], None], *, marker: str) -> None:
    """Let `build` fill a temporary folder, then make it `folder`, atomically.

    The files are written and fsynced in a hidden sibling folder, which then replaces `folder`:
    the old one is renamed aside, the new one renamed in, the old one deleted. An existing
    `folder` must be empty or hold `marker`; other folders are never replaced. Leftovers of
    killed writes are cleaned up first. One writer per folder at a time.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _recover(folder)
    if folder.exists() and not (
        folder.is_dir() and ((folder / marker).is_file() or not any(folder.iterdir()))
    ):
        raise ConfigError(
            f"'{folder}' exists and is not a folder holding {marker}; refusing to replace it"
        )
    tmp = _sibling(folder, "tmp")
    tmp.mkdir()
    try:
        build(tmp)
        if not (tmp / marker).is_file():
            raise FrozenLMError(f"building '{folder}' did not write its {marker}")
        _fsync(tmp)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sibling(folder: Path, tag: str) -> Path:
    return folder.parent / f".{folder.name}.{tag}-{secrets.token_hex(4)}"


def siblings(folder: Path, tag: str) -> list[Path]:
    """Hidden siblings `.NAME.TAG-*` of `folder`, oldest first."""
    if not folder.parent.is_dir():
        return []
    prefix = f".{folder.name}.{tag}-"
    found = [p for p in folder.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(directory: Path) -> None:
    """Make new entries and renames in `directory` durable (skipped where unsupported)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_in(tmp: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(tmp, folder)
        _fsync(folder.parent)
        return
    aside = _sibling(folder, "old")
    os.rename(folder, aside)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    _fsync(folder.parent)
    _delete(aside, folder)


def _delete(path: Path, folder: Path) -> None:
    """Remove `path` (`folder` or one of its siblings): renamed to a `.NAME.del-*` sibling of
    `folder` first (one atomic step), then deleted, so a kill mid-delete leaves a folder that is
    garbage by its name, never a half-deleted "old" one that `_recover` could mistake for a
    complete version."""
    doomed = _sibling(folder, "del")
    os.rename(path, doomed)
    _fsync(folder.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def _recover(folder: Path) -> None:
    """Undo what a killed write left: temp folders, folders being deleted, and an old complete
    version renamed aside while the new one was not yet renamed in (it is put back).

    Interrupt points of `build_folder` and what is found afterwards:
    - while building: `folder` (old, complete) and `.NAME.tmp-*` (partial): the temp is removed;
    - between the two renames: `.NAME.old-*` (complete) and `.NAME.tmp-*` (complete), no
      `folder`: the old one is renamed back, the temp removed;
    - after the swap: `folder` (new) and `.NAME.old-*` or `.NAME.del-*`: both removed.
    An "old" folder is only ever a complete version renamed aside: deletion goes through "del".
    """
    olds = siblings(folder, "old")
    if olds and not folder.exists():
        log.warning("restoring '%s' from '%s', left by an interrupted save", folder, olds[-1])
        os.rename(olds.pop(), folder)
        _fsync(folder.parent)
    for stale in olds:
        _delete(stale, folder)
    for stale in [*siblings(folder, "tmp"), *siblings(folder, "del")]:
        shutil.rmtree(stale, ignore_errors=True)


def leftovers(folder: str | Path) -> list[Path]:
    """The hidden siblings (`.NAME.tmp-*`, `.old-*`, `.del-*`) an interrupted write of `folder`
    may have left."""
    folder = Path(folder)
    return [p for tag in ("tmp", "old", "del") for p in siblings(folder, tag)]


def remove_folder(folder: str | Path) -> None:
    """Delete `folder` (if it exists) in one atomic rename: a kill leaves it whole or gone (and
    a hidden `.NAME.del-*` sibling, removed by the next call)."""
    folder = Path(folder)
    if folder.exists():
        _delete(folder, folder)
    for stale in siblings(folder, "del"):
        shutil.rmtree(stale, ignore_errors=True)


def check_output_file(path: str | Path, option: str = "out") -> Path:
    """Refuse, before any work, an output file that cannot be written: `path` is a folder, or
    its parent is a file (or under one). Returns `path`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} '{path}' is a folder; expected the name of a file to write")
    _check_creatable(path.parent, path, option)
    return path


def check_output_folder(
    path: str | Path, option: str = "out", *, marker: str | None = None
) -> Path:
    """Refuse, before any work, an output folder that cannot be made: `path` is a file, or its
    parent is a file (or under one), or (with `marker`, for a folder `build_folder` will
    replace) a non-empty folder without `marker`. Returns `path`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} '{path}' is a file; expected a folder to write into")
    if marker and path.is_dir() and not (path / marker).is_file() and any(path.iterdir()):
        raise ConfigError(
            f"{option} '{path}' is a folder that does not hold {marker}; refusing to replace it"
        )
    _check_creatable(path.parent, path, option)
    return path


def _check_creatable(parent: Path, path: Path, option: str) -> None:
    """The nearest existing ancestor of `path` must be a writable folder."""
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ConfigError(
            f"{option} '{path}' cannot be created: '{ancestor}' is a file, not a folder"
        )
    if ancestor.is_dir() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} '{path}' cannot be created: '{ancestor}' is not writable")
