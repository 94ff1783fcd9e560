"""Benchmark: the QA pipeline's speed, stage by stage, on the built-in `nq`.

- index build: BM25 over the whole corpus (timed here); dense, the seconds the saved index
  recorded when it was built (embedding ~24k passages takes minutes: not repeated);
- retrieval latency per question (one question at a time: p50, p95) for BM25, dense, hybrid;
- re-ranking latency per question (its `depth` passages scored in one batch: p50, p95), and
  against scoring one pair at a time (the batching gain);
- reader questions/s, with the prompt's shared prefix (instruction + demonstrations) computed
  once per batch against every row computing it (`share_text` off): the ratio is the gain;
- end-to-end questions/s of `qa.ask.ask` (retrieve, re-rank, pack, read), one at a time.

    python benchmarks/qa.py --out benchmarks/results/qa.json [--questions 16] [--reranker DIR]

Needs `frozenlm qa get nq` and `frozenlm qa index` (and, for re-ranking, a re-ranker).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from frozenlm.assets import cache_dir
from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.engine.batching import generate_rows
from frozenlm.engine.generation import GenerationConfig
from frozenlm.evaluation.evaluate import prompt_rows
from frozenlm.qa.ask import AskConfig, ask
from frozenlm.qa.nq import load_nq
from frozenlm.qa.reader import ContextPacker, ReaderConfig, reader_task
from frozenlm.qa.rerank import load_reranker
from frozenlm.qa.retrieve import IndexConfig, build_index, load_index


def percentiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * p95, "n": len(ordered)}


def timed(fn, *args):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--questions", type=int, default=16, help="test questions timed")
    parser.add_argument("--index", default=str(cache_dir() / "qa" / "nq" / "index"))
    parser.add_argument("--reranker", default=str(cache_dir() / "qa" / "nq" / "reranker"))
    parser.add_argument("--depth", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)

    task = load_nq()
    questions = [e.question for e in task.test[: args.questions]]
    out: dict[str, object] = {
        "corpus_passages": len(task.corpus),
        "questions": len(questions),
        "threads": torch.get_num_threads(),
    }
    _, bm25_seconds = timed(build_index, task.corpus, IndexConfig(parts=("bm25",)))
    index = load_index(args.index, task.corpus)
    out["index_build_s"] = {"bm25": bm25_seconds, "dense (recorded)": index.seconds.get("dense")}

    retrieval = {}
    for name in ("bm25", "dense", "hybrid"):
        retriever = index.retriever(name)
        retriever.search(questions[:1], args.depth)  # warm-up
        retrieval[name] = percentiles(
            [timed(retriever.search, [q], args.depth)[1] for q in questions]
        )
    out["retrieval"] = retrieval

    hits = index.retriever("hybrid").search(questions, args.depth)
    reranker = load_reranker(args.reranker) if Path(args.reranker).is_dir() else None
    if reranker is not None:
        reranker.rerank(questions[:1], hits[:1], task.corpus, args.depth)  # warm-up
        seconds = [
            timed(reranker.rerank, [q], [h], task.corpus, args.depth)[1]
            for q, h in zip(questions, hits, strict=True)
        ]
        out["rerank"] = percentiles(seconds) | {"passages_per_question": args.depth}
        few = list(zip(questions, hits, strict=True))[:4]
        one_by_one = [
            timed(reranker.rerank, [q], [h], task.corpus, args.depth, 1)[1] for q, h in few
        ]
        out["rerank_one_pair_at_a_time"] = percentiles(one_by_one)
        out["rerank_batching_speedup"] = statistics.median(one_by_one) / statistics.median(
            seconds[: len(few)]
        )

    backbone = Backbone.load()
    config = ReaderConfig()
    packer = ContextPacker(backbone, reader_task(task, [], []), config)
    examples = list(task.test[: args.questions])
    prompts = []
    for example, ranked in zip(examples, hits, strict=True):
        packed = packer.pack(example, [p for p, _ in ranked], task.corpus)
        prompts.append(packer.render(example, packed.context))
    rows = prompt_rows(prompts)
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens)
    reader = {}
    for share in (True, False):
        _, seconds = timed(
            lambda share=share: generate_rows(
                backbone, rows, generation, config.eval_config().budget(), share_text=share
            )
        )
        reader["shared_prefix" if share else "no_sharing"] = {
            "questions_per_s": len(rows) / seconds,
            "seconds": seconds,
        }
    reader["speedup"] = (
        reader["shared_prefix"]["questions_per_s"] / reader["no_sharing"]["questions_per_s"]
    )
    reader["mean_prompt_tokens"] = sum(len(p.ids) for p in prompts) / len(prompts)
    out["reader"] = reader

    ask_config = AskConfig(depth=args.depth, reader=config)
    _, seconds = timed(
        lambda: [ask(backbone, task, index, q, reranker, ask_config) for q in questions]
    )
    out["end_to_end"] = {"questions_per_s": len(questions) / seconds, "seconds": seconds,
                         "reranker": reranker is not None}  # fmt: skip
    atomic_write_json(args.out, out)
    print(out)


if __name__ == "__main__":
    main()
