from __future__ import annotations

import json

import pytest

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import evaluate
from frozenlm.qa.evaluate import QAEvalConfig, evaluate_qa, recall_at
from frozenlm.qa.reader import ReaderConfig, reader_task
from frozenlm.qa.retrieve import IndexConfig, build_index


@pytest.fixture(scope="module")
def bm25_index(toy_qa):
    return build_index(toy_qa.corpus, IndexConfig(parts=("bm25",)))


def test_recall_counts_answers_and_gold_passages_within_k(toy_qa) -> None:
    examples = list(toy_qa.test[:2])
    gold = [toy_qa.corpus.position(e.gold[0]) for e in examples]
    distractor = toy_qa.corpus.position("d00")
    hits = [[(distractor, 2.0), (gold[0], 1.0)], [(gold[1], 2.0), (distractor, 1.0)]]
    recall = recall_at(examples, hits, toy_qa.corpus, [1, 2])
    assert recall["answer@1"].value == 0.5 and recall["answer@2"].value == 1.0
    assert recall["gold@1"].value == 0.5 and recall["gold@2"].value == 1.0


def test_report_measures_every_stage_and_reader_equals_plain_evaluate(
    tiny: Backbone, toy_qa, bm25_index
) -> None:
    config = QAEvalConfig(
        limit=3,
        retrievers=("bm25",),
        retriever="bm25",
        ks=(1, 5),
        contexts=("closed", "retrieved", "gold"),
        reader=ReaderConfig(budget=200, max_new_tokens=4),
    )
    report = evaluate_qa(tiny, toy_qa, bm25_index, None, config)
    assert report.n_retrieval == len(toy_qa.test) and report.n_read == 3
    assert set(report.retrieval["bm25"]) == {"answer@1", "answer@5", "gold@1", "gold@5"}
    assert report.retrieval["bm25"]["gold@5"].value == 1.0
    assert report.packing["gold"]["passages"] == 1.0
    assert report.packing["gold"]["gold_in_context"].value == 1.0
    assert report.packing["retrieved"]["passages"] >= 1.0
    assert set(report.reader) == {"closed", "retrieved", "gold"}
    data = json.loads(json.dumps(report.to_json()))
    assert (
        data["reader"]["gold"]["exact_match"]["value"] == report.reader["gold"]["exact_match"].value
    )
    # the reader's predictions are those of evaluating the same contexts as a generation task
    contexts = [r["passages"] for r in report.predictions["gold"]]
    assert contexts == [list(e.gold) for e in toy_qa.test[:3]]
    from frozenlm.qa.pack import format_passages

    texts = [
        format_passages([toy_qa.corpus[toy_qa.corpus.position(e.gold[0])].full_text])
        for e in toy_qa.test[:3]
    ]
    plain = evaluate(
        tiny, reader_task(toy_qa, list(toy_qa.test[:3]), texts), config.reader.eval_config()
    )
    assert [p["generated"] for p in plain.predictions] == [
        p["generated"] for p in report.predictions["gold"]
    ]
    assert "bm25" in report.headline()


def test_reranked_needs_a_reranker_and_counterfactual_needs_nq(
    tiny: Backbone, toy_qa, bm25_index
) -> None:
    with pytest.raises(ConfigError, match="needs a re-ranker"):
        evaluate_qa(
            tiny,
            toy_qa,
            bm25_index,
            None,
            QAEvalConfig(limit=1, retrievers=("bm25",), retriever="bm25"),
        )
    with pytest.raises(ConfigError, match="only the built-in nq"):
        evaluate_qa(
            tiny,
            toy_qa,
            bm25_index,
            None,
            QAEvalConfig(
                limit=1, retrievers=("bm25",), retriever="bm25", contexts=("counterfactual",)
            ),
        )
    with pytest.raises(ConfigError, match="unknown reader context"):
        QAEvalConfig(contexts=("oracle",))


def test_with_a_reranker_and_no_contexts_only_retrieval_and_reranking_are_measured(
    tiny: Backbone, toy_qa, bm25_index
) -> None:
    from frozenlm.qa.rerank import Reranker, RerankerConfig, new_model

    reranker = Reranker(new_model(RerankerConfig(max_length=64)))
    config = QAEvalConfig(
        limit=2, retrievers=("bm25",), retriever="bm25", ks=(1, 5), rerank_depth=5, contexts=()
    )
    report = evaluate_qa(tiny, toy_qa, bm25_index, reranker, config)
    assert report.reader == {} and report.packing == {}
    assert set(report.reranked) == {
        "answer@1", "answer@5", "gold@1", "gold@5",
        "answer@1 before", "answer@5 before", "gold@1 before", "gold@5 before",
        "answer@1 alone", "answer@5 alone", "gold@1 alone", "gold@5 alone",
    }  # fmt: skip
    assert report.config["fusion"] == reranker.fusion == 10  # the default, fused
    # the top 5 hold the same passages in every order
    gold = report.reranked
    assert gold["gold@5"].value == gold["gold@5 before"].value == gold["gold@5 alone"].value
    reranker.fusion = 0
    alone = evaluate_qa(tiny, toy_qa, bm25_index, reranker, config)
    assert not any(k.endswith(" alone") for k in alone.reranked)
    assert alone.reranked["answer@1"].value == report.reranked["answer@1 alone"].value
