"""Print the constraints file: the exact version of every package frozenlm[dev] needs, as
installed in this environment (the one CI tested).

Refresh after changing a dependency or to move to newer releases, in a fresh environment:

    pip install torch==2.13.0 && pip install --no-deps -r requirements-assets.txt
    pip install -e ".[dev]"            # no -c: newest releases within pyproject's ranges
    CI=true bash .ci/run               # must pass before the new versions are locked
    python scripts/lock_constraints.py > constraints.txt
"""

from __future__ import annotations

import importlib.metadata as metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Versions CI tested, used by the README's commands and .ci/run as pip constraints (-c):
# an install next month gets these, not whatever is newest. pyproject.toml keeps ranges for
# library users. Refresh: see scripts/lock_constraints.py. torch is the local CPU wheel.
"""


def closure(root: str = "frozenlm", extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    """Installed version of every distribution `root[extras]` needs, directly or not."""
    pending = [(root, set(extras))]
    versions: dict[str, str] = {}
    while pending:
        name, wanted = pending.pop()
        key = canonicalize_name(name)
        if key in versions:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency for another platform
        versions[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(
                req.marker.evaluate({"extra": extra}) for extra in (wanted or {""})
            ):
                pending.append((req.name, set(req.extras)))
    versions.pop(canonicalize_name(root))
    return versions


def main() -> None:
    lines = [HEADER.rstrip("\n")]
    for name, version in sorted(closure().items()):
        lines.append(f"{name}=={version.split('+')[0]}")  # 2.13.0+cpu -> 2.13.0
    print("\n".join(lines))


if __name__ == "__main__":
    main()
