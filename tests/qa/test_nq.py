from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from frozenlm.errors import AssetError
from frozenlm.qa import nq

BIGBENCH_ROWS = {
    "examples": [
        {
            "input": "\nQuestion: who wrote the song carry on?\nContext: Carry On is a song "
            "written by Stephen Strasburg for Kansas .",
            "target": "Stephen Strasburg",
            "target_scores": {"Stephen Strasburg": 1, "Kerry Livgren": 0},
        },
        {
            "input": "\nQuestion: who sang carry on?\nContext: Carry On is a song written by "
            "Stephen Strasburg for Kansas .",
            "target": "Stephen Strasburg",
            "target_scores": {"Stephen Strasburg": 1, "Kerry Livgren": 0},
        },
        {  # the first question again, with another swap: one copy is kept
            "input": "\nQuestion: Who wrote the song  carry on?\nContext: Carry On is a song "
            "written by Ada Lovelace for Kansas .",
            "target": "Ada Lovelace",
            "target_scores": {"Ada Lovelace": 1, "Kerry Livgren": 0},
        },
    ]
}


def test_restore_puts_the_original_answer_back_and_keeps_the_swap() -> None:
    examples, passages = nq.restore(BIGBENCH_ROWS)
    assert len(examples) == 2
    assert len(passages) == 1  # both kept questions share the restored passage
    assert passages[0].text == "Carry On is a song written by Kerry Livgren for Kansas ."
    first = next(e for e in examples if e.question == "who wrote the song carry on?")
    assert first.answers == ("Kerry Livgren",)
    assert first.gold == (passages[0].id,)
    assert first.extra["swapped_answer"] in ("Stephen Strasburg", "Ada Lovelace")
    assert first.extra["swapped_answer"] in first.extra["swapped_context"]


def test_member_is_read_from_a_tar_stream_and_checked(tmp_path: Path) -> None:
    data = json.dumps(BIGBENCH_ROWS).encode()
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("pkg-1.0/task.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    import hashlib

    good = nq.Source("pkg==1.0", "pkg-1.0/task.json", hashlib.sha256(data).hexdigest())
    assert nq._extract(good, archive) == data
    with pytest.raises(AssetError, match="has sha256"):
        nq._extract(nq.Source("pkg==1.0", "pkg-1.0/task.json", "0" * 64), archive)
    with pytest.raises(AssetError, match="does not hold"):
        nq._extract(nq.Source("pkg==1.0", "pkg-1.0/other.json", "0" * 64), archive)


def test_missing_nq_names_the_command_that_fetches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path))
    nq._load_nq_files.cache_clear()
    nq.load_nq.cache_clear()
    try:
        with pytest.raises(AssetError, match="frozenlm qa get nq"):
            nq.load_nq()
    finally:
        nq._load_nq_files.cache_clear()
        nq.load_nq.cache_clear()


@pytest.mark.skipif(not nq.is_fetched(), reason="nq is not fetched: run `frozenlm qa get nq`")
def test_fetched_nq_has_the_documented_size() -> None:
    task = nq.load_nq()
    assert sum(task.split_sizes().values()) == 17_526
    assert task.split_sizes()["test"] == 1000
    assert len(task.corpus) == 23_866
    assert all("swapped_context" in e.extra for e in task.test)
