from __future__ import annotations

import json
from pathlib import Path

import pytest

from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.qa.data import Corpus, Passage, QAExample
from frozenlm.qa.rerank import (
    Reranker,
    RerankerConfig,
    has_answer,
    load_reranker,
    mine_pairs,
    save_reranker,
    train_reranker,
    training_columns,
)
from frozenlm.qa.retrieve import IndexConfig, build_index


def test_has_answer_matches_whole_normalised_words() -> None:
    assert has_answer("The river Amber, in spring.", ["amber"])
    assert has_answer("It is the Red River.", ["red river"])
    assert not has_answer("Amberley is a village.", ["Amber"])
    assert not has_answer("anything", ["the"])  # normalises to nothing: never matches


def test_mining_pairs_each_positive_with_hard_negatives_that_hold_no_answer() -> None:
    corpus = Corpus(
        [
            Passage("g", "gold says Amber"),
            Passage("n1", "no answer here"),
            Passage("n2", "also Amber but not gold"),
            Passage("n3", "nothing"),
        ]
    )
    example = QAExample("q", "which river?", ("Amber",), gold=("g",))
    hits = [[(1, 3.0), (2, 2.0), (0, 1.0), (3, 0.5)]]
    queries, passages, labels = mine_pairs([example], hits, corpus, RerankerConfig(negatives=3))
    pairs = sorted(zip(passages, labels, strict=True))
    assert pairs == [("gold says Amber", 1.0), ("no answer here", 0.0), ("nothing", 0.0)]
    assert queries == ["which river?"] * 3
    # without gold passages the best-ranked passage holding an answer is the positive
    loose = QAExample("q", "which river?", ("Amber",))
    _, passages, labels = mine_pairs([loose], hits, corpus, RerankerConfig(negatives=1))
    assert sorted(zip(passages, labels, strict=True)) == [
        ("also Amber but not gold", 1.0),
        ("no answer here", 0.0),
    ]


def test_listwise_rows_hold_the_positive_and_every_hard_negative() -> None:
    corpus = Corpus([Passage(f"p{i}", f"passage {i}" + (" Amber" if i == 0 else ""))
                     for i in range(6)])  # fmt: skip
    examples = [
        QAExample("a", "first?", ("Amber",), gold=("p0",)),
        QAExample("b", "second?", ("Amber",), gold=("p0",)),
    ]
    hits = [[(0, 9.0), (1, 8.0), (2, 7.0), (3, 6.0)], [(4, 9.0), (0, 8.0)]]
    config = RerankerConfig(negatives=2, loss="listwise")
    columns = training_columns(examples, hits, corpus, config)
    # the second question has one hard negative only: a listwise row needs both
    assert columns == {
        "query": ["first?"],
        "positive": ["passage 0 Amber"],
        "negative_1": ["passage 1"],
        "negative_2": ["passage 2"],
    }
    bce = training_columns(examples, hits, corpus, RerankerConfig(negatives=2, loss="bce"))
    assert sorted(bce["label"]) == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_bad_reranker_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="negatives must be a positive"):
        RerankerConfig(negatives=0)
    with pytest.raises(ConfigError, match="lr must be positive"):
        RerankerConfig(lr=0)
    with pytest.raises(ConfigError, match="loss must be bce or listwise"):
        RerankerConfig(loss="hinge")  # type: ignore[arg-type]


def test_training_lowers_the_loss_and_the_checkpoint_round_trips(toy_qa, tmp_path: Path) -> None:
    index = build_index(toy_qa.corpus, IndexConfig(parts=("bm25",)))
    config = RerankerConfig(
        questions=0, negatives=3, mine_depth=10, epochs=4, batch_size=8, lr=2e-4, max_length=64
    )
    reranker = train_reranker(toy_qa, index.retriever("bm25"), config)
    assert reranker.meta["pairs"] == 4 * len(toy_qa.train)
    # the toy's passages differ only in made-up names, which a few steps do not learn to match;
    # what must hold is that the loss falls
    losses = reranker.meta["loss_history"]
    assert len(losses) >= 6 and sum(losses[-3:]) < sum(losses[:3]), losses
    examples = list(toy_qa.test) + list(toy_qa.dev)
    hits = index.retriever("bm25").search([e.question for e in examples], 10)
    questions = [e.question for e in examples]
    reranked = reranker.rerank(questions, hits, toy_qa.corpus, 10)
    alone = reranker.ranked(questions, hits, toy_qa.corpus, 10)
    assert reranked == reranker.fused(alone, hits)
    for before, *after in zip(hits, reranked, alone, strict=True):  # the same passages, by score
        for order in after:
            assert sorted(p for p, _ in before) == sorted(p for p, _ in order)
            scores = [score for _, score in order]
            assert scores == sorted(scores, reverse=True)

    folder = tmp_path / "reranker"
    save_reranker(reranker, folder)
    assert (folder / "model.safetensors").is_file()
    assert json.loads((folder / "reranker.json").read_text())["pairs"] == reranker.meta["pairs"]
    loaded = load_reranker(folder, toy_qa.corpus)
    pairs = [
        (e.question, toy_qa.corpus[h[0][0]].full_text) for e, h in zip(examples, hits, strict=True)
    ]
    a = reranker.score([q for q, _ in pairs], [p for _, p in pairs])
    b = loaded.score([q for q, _ in pairs], [p for _, p in pairs])
    assert a == pytest.approx(b, abs=1e-5)


def test_fusion_mixes_the_rerankers_order_with_the_retrievers() -> None:
    ranked = [[(3, 9.0), (1, 5.0), (2, 1.0)]]  # the cross-encoder's order
    retrieved = [[(1, 0.3), (2, 0.2), (3, 0.1), (4, 0.0)]]  # beyond the depth: dropped
    fused = Reranker(None, fusion=10).fused(ranked, retrieved)
    # 1: 1/12 + 1/11, 3: 1/11 + 1/13, 2: 1/13 + 1/12
    assert [p for p, _ in fused[0]] == [1, 3, 2]
    assert fused[0][0][1] == pytest.approx(1 / 12 + 1 / 11)
    assert Reranker(None, fusion=0).fused(ranked, retrieved) == ranked
    # the checkpoint's recipe decides unless told otherwise
    assert Reranker(None, {"config": {"fusion": 0}}).fusion == 0
    assert Reranker(None, {}).fusion == RerankerConfig.fusion == 10
    with pytest.raises(ConfigError, match="fusion must be >= 0"):
        Reranker(None, fusion=-1)
    with pytest.raises(ConfigError, match="fusion must be >= 0"):
        RerankerConfig(fusion=-1)


def test_not_a_reranker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a frozenlm re-ranker"):
        load_reranker(tmp_path)
    (tmp_path / "reranker.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_reranker(tmp_path)
