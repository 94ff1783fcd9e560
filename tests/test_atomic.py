"""Atomic folder swaps: every interrupt point leaves a complete version; output path checks.

(Checkpoint-level atomic saves are tested in tests/plugins/test_checkpoint.py.)"""

import shutil
from pathlib import Path

import pytest

from frozenlm import atomic
from frozenlm.atomic import (
    atomic_write_json,
    build_folder,
    check_output_file,
    check_output_folder,
    leftovers,
    remove_folder,
    write_folder,
)
from frozenlm.errors import ConfigError


def _write(folder: Path, version: str) -> None:
    write_folder(folder, {"a.txt": version.encode(), "done.json": b"{}"}, marker="done.json")


def _copy(version: str, to: Path, tmp_path: Path) -> Path:
    """A complete folder of `version`, moved to `to` as a killed swap would have left it."""
    _write(tmp_path / "scratch", version)
    (tmp_path / "scratch").rename(to)
    return to


def _state(folder: Path) -> tuple[str, list[str]]:
    return (folder / "a.txt").read_text(), sorted(p.name for p in folder.parent.iterdir())


@pytest.mark.parametrize(
    "point", ["while building", "between the renames", "after the swap", "while deleting"]
)
def test_every_interrupt_point_of_a_swap_keeps_a_complete_version(
    point: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    folder = root / "f"
    _write(folder, "v1")
    if point == "while building":  # v1 in place, a partial temp beside it
        (root / ".f.tmp-0000aaaa").mkdir()
        (root / ".f.tmp-0000aaaa" / "a.txt").write_text("v2 half")
        expected = "v1"
    elif point == "between the renames":  # v1 aside, v2 complete in its temp, no folder
        folder.rename(root / ".f.old-0000aaaa")
        _copy("v2", root / ".f.tmp-0000bbbb", tmp_path)
        expected = "v1"
    elif point == "after the swap":  # v2 in place, v1 still aside
        folder.rename(root / ".f.old-0000aaaa")
        _copy("v2", folder, tmp_path)
        expected = "v2"
    else:  # v2 in place, v1 half-deleted under its "del" name
        _copy("v1", root / ".f.del-0000aaaa", tmp_path)
        (root / ".f.del-0000aaaa" / "a.txt").unlink()
        shutil.rmtree(folder)
        _copy("v2", folder, tmp_path)
        expected = "v2"
    assert leftovers(folder)
    atomic._recover(folder)
    assert _state(folder) == (expected, ["f"])
    _write(folder, "v3")
    assert _state(folder) == ("v3", ["f"])


def test_a_half_deleted_old_version_is_never_named_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill while the replaced version is deleted leaves a `.del-` folder, not an `.old-` one
    that a later recovery could put back as if it were complete."""
    folder = tmp_path / "f"
    _write(folder, "v1")
    rmtree = shutil.rmtree

    def killed_half_way(path: Path, ignore_errors: bool = False) -> None:
        if not Path(path).is_dir():  # build_folder's own clean-up of its (renamed) temp
            return rmtree(path, ignore_errors=ignore_errors)
        (Path(path) / "a.txt").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        _write(folder, "v2")
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    (half,) = leftovers(folder)
    assert half.name.startswith(".f.del-") and not (half / "a.txt").exists()
    folder.rename(tmp_path / "elsewhere")  # even with the folder gone, it is not restored
    atomic._recover(folder)
    assert not folder.exists() and not leftovers(folder)


def test_remove_folder_is_one_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "run"
    _write(folder, "v1")
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # killed before deleting
    remove_folder(folder)
    assert not folder.exists() and [p.name[:9] for p in leftovers(folder)] == [".run.del-"]
    monkeypatch.undo()
    remove_folder(folder)  # the next call clears what the kill left
    assert list(tmp_path.iterdir()) == []


def test_output_paths_are_checked_with_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"^--out '.*dir' is a folder; expected the name of a"):
        check_output_file(tmp_path / "dir", "--out")
    with pytest.raises(ConfigError, match=r"cannot be created: '.*file' is a file, not a folder"):
        check_output_file(tmp_path / "file" / "sub" / "r.json", "--out")
    with pytest.raises(ConfigError, match=r"^--out '.*file' is a file; expected a folder"):
        check_output_folder(tmp_path / "file", "--out")
    with pytest.raises(ConfigError, match=r"cannot be created: '.*file' is a file"):
        check_output_folder(tmp_path / "file" / "run", "--out")
    (tmp_path / "dir" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"does not hold done\.json; refusing to replace it"):
        check_output_folder(tmp_path / "dir", "OUT", marker="done.json")
    assert check_output_file(tmp_path / "new" / "deeper" / "r.json") == (
        tmp_path / "new" / "deeper" / "r.json"
    )
    assert check_output_folder(tmp_path / "dir") == tmp_path / "dir"  # a folder to write into
    assert not (tmp_path / "new").exists()  # checking creates nothing
    build_folder(tmp_path / "empty", _marker_only, marker="done.json")
    check_output_folder(tmp_path / "empty", "OUT", marker="done.json")


def _marker_only(folder: Path) -> None:
    (folder / "done.json").write_text("{}")


def test_an_atomic_file_gets_the_mode_open_would_give_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    atomic_write_json(tmp_path / "new.json", {})
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    (tmp_path / "new.json").chmod(0o640)
    atomic_write_json(tmp_path / "new.json", {"again": 1})  # replacing keeps the file's mode
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640
