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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
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
    shutil.rmtree(aside, ignore_errors=True)


def _recover(folder: Path) -> None:
    """Undo what a killed write left: temp folders, and an old checkpoint renamed aside while
    the new one was not yet renamed in (it is put back)."""
    olds = siblings(folder, "old")
    if olds and not folder.exists():
        log.warning("restoring '%s' from '%s', left by an interrupted save", folder, olds[-1])
        os.rename(olds.pop(), folder)
    for stale in [*siblings(folder, "tmp"), *olds]:
        shutil.rmtree(stale, ignore_errors=True)
