from __future__ import annotations

import json
from pathlib import Path

import pytest

from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.qa.data import Corpus, Passage
from frozenlm.qa.retrieve import IndexConfig, build_index, fuse, load_index, save_index


@pytest.fixture(scope="module")
def toy_index(toy_qa, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("index") / "toy"
    save_index(build_index(toy_qa.corpus), folder)
    return folder


@pytest.mark.parametrize("name", ["bm25", "dense", "hybrid"])
def test_each_retriever_finds_the_gold_passage_first(toy_qa, toy_index, name: str) -> None:
    index = load_index(toy_index, toy_qa.corpus)
    examples = [e for s in ("train", "dev", "test") for e in toy_qa.split(s)]
    hits = index.retriever(name).search([e.question for e in examples], 5)
    assert all(len(h) == 5 for h in hits)
    top = [toy_qa.corpus[h[0][0]].id for h in hits]
    found = sum(t == e.gold[0] for t, e in zip(top, examples, strict=True))
    assert found >= 22, f"{name}: gold first for {found}/24"
    for h in hits:  # best first
        scores = [s for _, s in h]
        assert scores == sorted(scores, reverse=True)


def test_reloaded_index_ranks_exactly_as_the_built_one(toy_qa, toy_index) -> None:
    built = build_index(toy_qa.corpus)
    loaded = load_index(toy_index, toy_qa.corpus)
    questions = [e.question for e in toy_qa.train]
    for name in ("bm25", "dense"):
        a = built.retriever(name).search(questions, 10)
        b = loaded.retriever(name).search(questions, 10)
        assert [[p for p, _ in h] for h in a] == [[p for p, _ in h] for h in b]
        for ha, hb in zip(a, b, strict=True):
            assert [s for _, s in ha] == pytest.approx([s for _, s in hb], abs=1e-5)
    saved = {p.name for p in toy_index.rglob("*") if p.is_file()}
    assert not [n for n in saved if n.endswith((".pkl", ".pt", ".bin", ".pickle"))]
    meta = json.loads((toy_index / "index.json").read_text())
    assert meta["corpus_fingerprint"] == toy_qa.corpus.fingerprint


def test_an_index_is_refused_for_another_corpus(toy_qa, toy_index) -> None:
    other = Corpus([*toy_qa.corpus.passages[:-1], Passage("d11", "changed text")])
    with pytest.raises(CheckpointError, match="built for another corpus"):
        load_index(toy_index, other)


def test_missing_and_broken_indexes_are_refused(toy_qa, toy_index, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a frozenlm QA index"):
        load_index(tmp_path, toy_qa.corpus)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed"):
        load_index(broken, toy_qa.corpus)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "index.json").write_text((toy_index / "index.json").read_text())
    with pytest.raises(CheckpointError, match="incomplete or corrupted"):
        load_index(partial, toy_qa.corpus)


def test_a_missing_part_names_the_command(toy_qa) -> None:
    index = build_index(toy_qa.corpus, IndexConfig(parts=("bm25",)))
    with pytest.raises(ConfigError, match="needs the dense part"):
        index.retriever("hybrid")
    with pytest.raises(ConfigError, match="unknown retriever"):
        index.retriever("splade")
    with pytest.raises(ConfigError, match="unknown index part"):
        IndexConfig(parts=("bm25", "colbert"))


def test_a_question_of_unknown_words_gets_no_bm25_hits(toy_qa) -> None:
    index = build_index(toy_qa.corpus, IndexConfig(parts=("bm25",)))
    hits = index.retriever("bm25").search(["zzzz qqqq", "the of and", toy_qa.train[0].question], 3)
    assert hits[0] == [] and hits[1] == []
    assert len(hits[2]) == 3


def test_fuse_is_reciprocal_rank_fusion() -> None:
    a = [[(1, 9.0), (2, 8.0), (3, 7.0)]]
    b = [[(3, 0.9), (1, 0.8), (4, 0.7)]]
    fused = fuse([a, b], k=4, rrf_k=60)[0]
    expected = {1: 1 / 61 + 1 / 62, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 63}
    assert [p for p, _ in fused] == [1, 3, 2, 4]
    assert dict(fused) == pytest.approx(expected)
