"""The README's quick start and .ci/run must agree: CI runs exactly the README's test command."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_is_exactly_two_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "frozenlm compare " in commands[0] and "pytest" in commands[1]
    assert all(c.startswith("pip install torch==2.13.0 && ") for c in commands)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert _quick_start_commands()[1] in ci


def test_every_asset_package_is_pinned() -> None:
    lines = (ROOT / "requirements-assets.txt").read_text().splitlines()
    packages = [line for line in lines if line.strip() and not line.startswith("#")]
    assert packages and all(re.fullmatch(r"[\w.-]+==[\w.]+", p) for p in packages)


def _pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_both_commands_install_with_the_tested_constraints() -> None:
    assert all(" -c constraints.txt " in c for c in _quick_start_commands())


def test_every_dependency_is_locked_within_its_range() -> None:
    """Each requirement of pyproject.toml (dev extra included) has a pin in constraints.txt that
    its range allows, so the lock and the ranges never disagree."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    requirements = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_the_lock_is_what_is_installed_here() -> None:
    """constraints.txt is the environment the tests run in (refresh it with
    scripts/lock_constraints.py when a version moves)."""
    import importlib.metadata as metadata

    for name, version in _pins().items():
        installed = metadata.version(name).split("+")[0]
        assert installed == version, f"{name}: installed {installed}, locked {version}"
