"""`frozenlm eval`: prompt design (`frozenlm.evaluation.evaluate.evaluate`), a saved plug-in
(`frozenlm.evaluation.saved.evaluate_saved`) or a prompt ensemble (`evaluate_saved_ensemble`)."""

from __future__ import annotations

import argparse

from frozenlm.cli.common import (
    add_backbone,
    check_output_file,
    load_backbone,
    record_eval,
    report,
)
from frozenlm.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frozenlm.evaluation.calibration import CALIBRATIONS
    from frozenlm.evaluation.evaluate import EvalConfig
    from frozenlm.prompts.render import FRAMINGS

    parser.add_argument("--task", help="a built-in task name or a task file (YAML/JSON)")
    parser.add_argument(
        "--plugin",
        help="a trained plug-in folder (from frozenlm train); several, comma-separated, are "
        "evaluated as a prompt ensemble",
    )
    parser.add_argument(
        "--allow-other-backbone",
        action="store_true",
        help="load a plug-in trained on other backbone weights anyway",
    )
    parser.add_argument("--method", choices=["zero-shot", "few-shot"], default=EvalConfig.method)
    parser.add_argument(
        "--shots", type=int, default=EvalConfig.shots, help="demonstrations for few-shot"
    )
    parser.add_argument(
        "--selection",
        choices=["random", "balanced", "nearest"],
        default=EvalConfig.selection,
        help="how demonstrations are chosen (nearest: by MiniLM embedding)",
    )
    parser.add_argument(
        "--framing",
        choices=FRAMINGS,
        default=EvalConfig.framing,
        help="qa: Q: ... A:; label: ... Label:",
    )
    parser.add_argument(
        "--no-chat-template", action="store_true", help="do not wrap prompts in the chat template"
    )
    parser.add_argument("--cot", action="store_true", help="chain of thought (generation tasks)")
    parser.add_argument(
        "--calibrate",
        nargs="?",
        const=EvalConfig.calibration,
        choices=CALIBRATIONS,
        metavar="MODE",
        help="contextual calibration: uniform (divide by the content-free label probabilities), "
        "prior (then weigh by the train label shares) or dev (whichever of none, uniform and "
        "prior has the best macro-F1 on dev); MODE defaults to %(const)s",
    )
    parser.add_argument(
        "--dev-limit",
        type=int,
        default=EvalConfig.dev_limit,
        help="dev examples scored by --calibrate dev (default %(default)s)",
    )
    parser.add_argument(
        "--length-normalize", action="store_true", help="mean log-probability per label token"
    )
    parser.add_argument("--split", default=EvalConfig.split, choices=["train", "dev", "test"])
    parser.add_argument(
        "--limit", type=int, default=EvalConfig.limit, help="evaluate the first N examples"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=EvalConfig.max_new_tokens,
        help="generation length limit",
    )
    parser.add_argument("--seed", type=int, default=EvalConfig.seed)
    parser.add_argument("--out", default=None, help="write the report as JSON to this file")
    add_backbone(parser)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out)
    if args.plugin and "," in args.plugin:
        return _run_ensemble(args)
    if args.plugin:
        return _run_saved(args)
    return _run_prompt_design(args)


def _run_prompt_design(args: argparse.Namespace) -> int:
    from frozenlm.compare.domain import load_compare_task
    from frozenlm.evaluation.evaluate import EvalConfig, evaluate

    if not args.task:
        raise ConfigError("eval needs --task (or --plugin DIR, which knows its tasks)")
    config = EvalConfig(
        method=args.method,
        shots=args.shots,
        selection=args.selection,
        framing=args.framing,
        chat_template=not args.no_chat_template,
        chain_of_thought=args.cot,
        calibrate=args.calibrate is not None,
        calibration=args.calibrate or EvalConfig.calibration,
        dev_limit=args.dev_limit,
        length_normalize=args.length_normalize,
        split=args.split,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    task = load_compare_task(args.task, seed=args.seed)
    backbone = load_backbone(args)
    result = evaluate(backbone, task, config)
    report(result.headline(), result.to_json(), args.out)
    record_eval(args, backbone, [task], [result.to_json()])
    return 0


def _run_saved(args: argparse.Namespace) -> int:
    from frozenlm.compare.domain import load_compare_task
    from frozenlm.evaluation.saved import evaluate_saved

    backbone = load_backbone(args)
    result = evaluate_saved(
        backbone,
        args.plugin,
        args.task.split(",") if args.task else None,
        split=args.split,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        allow_other_backbone=args.allow_other_backbone,
        loader=lambda ref, seed: load_compare_task(ref, seed=seed),
    )
    report(result.headline(), result.to_json(), args.out)
    record_eval(args, backbone, result.tasks, [r.to_json() for r in result.reports])
    return 0


def _run_ensemble(args: argparse.Namespace) -> int:
    from frozenlm.evaluation.saved import evaluate_saved_ensemble

    if not args.task or "," in args.task:
        raise ConfigError("an ensemble (--plugin A,B,...) is evaluated on one --task")
    backbone = load_backbone(args)
    result = evaluate_saved_ensemble(
        backbone,
        args.plugin.split(","),
        args.task,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        allow_other_backbone=args.allow_other_backbone,
    )
    report(result.headline(), result.to_json(), args.out)
    record_eval(args, backbone, [result.task], [result.to_json()])
    return 0
