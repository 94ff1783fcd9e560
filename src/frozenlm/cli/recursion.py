"""`frozenlm recursion`: the recursive LM's baselines and its selective use.

The connector itself trains with `frozenlm train --method recursion` (and `--pretrain-lm` for
its language-modelling pre-training) and is evaluated with `frozenlm eval --plugin`.
`recursion textual` is the textual-recursion baseline (`frozenlm.recursion.textual`);
`recursion curve` turns a one-pass and a two-pass test report into the accuracy-vs-compute
curve of selective recursion (`frozenlm.recursion.selective`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from frozenlm.cli.common import (
    add_backbone,
    check_output_file,
    check_output_folder,
    load_backbone,
    record,
)
from frozenlm.errors import ConfigError, DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frozenlm.cli.train import add_training_options
    from frozenlm.recursion.textual import TextualConfig

    parser.description = (
        "The recursive LM (Levine et al. 2022): textual recursion (pass 1 samples candidate "
        "answers, pass 2 reads them) and selective recursion (pass 2 only where pass 1 is "
        "unsure). The connector trains with `frozenlm train --method recursion`."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    textual = sub.add_parser(
        "textual",
        help="pass 1 samples k candidates, pass 2 reads them with a trained soft prompt",
        allow_abbrev=False,
    )
    textual.add_argument("--task", required=True, help="task name or file")
    textual.add_argument("--out", required=True, help="output folder (task/, prompt/, test.json)")
    textual.add_argument("--k", type=int, default=TextualConfig.k, help="candidates per input")
    textual.add_argument(
        "--temperature",
        type=float,
        default=TextualConfig.temperature,
        help="pass 1's sampling temperature",
    )
    textual.add_argument("--limit", type=int, help="test examples evaluated (default: all)")
    add_training_options(textual)  # its --first-prompt: the one-pass soft prompt of pass 1
    add_backbone(textual)

    curve = sub.add_parser(
        "curve",
        help="accuracy against compute when pass 2 runs only below a pass-1 confidence",
        allow_abbrev=False,
    )
    curve.add_argument("--one", required=True, help="the one-pass model's test report (JSON)")
    curve.add_argument("--two", required=True, help="the two-pass model's test report (JSON)")
    curve.add_argument("--out", required=True, help="the curve (JSON)")
    curve.add_argument("--plot", help="also draw it (PNG)")
    curve.add_argument(
        "--parameters",
        type=int,
        help="backbone parameters for the FLOPs column (default: the backbone's)",
    )
    add_backbone(curve)


def run(args: argparse.Namespace) -> int:
    return {"textual": _textual, "curve": _curve}[args.action](args)


def _textual(args: argparse.Namespace) -> int:
    from frozenlm.atomic import atomic_write_json
    from frozenlm.cli.train import training_settings
    from frozenlm.compare.domain import load_compare_task
    from frozenlm.recursion.textual import TextualConfig, textual_recursion

    check_output_folder(args.out)
    out = Path(args.out)
    first_prompt = args.first_prompt
    if not first_prompt:
        raise ConfigError("recursion textual needs --first-prompt: the one-pass soft prompt")
    args.method, args.first_prompt = "soft-prompt", None  # pass 2 reads them with a soft prompt
    plugin_config, config = training_settings(args)
    backbone = load_backbone(args)
    task = load_compare_task(args.task, seed=config.seed)
    textual = TextualConfig(k=args.k, temperature=args.temperature, seed=config.seed)
    result = textual_recursion(
        backbone,
        first_prompt,
        task,
        out,
        textual,
        config,
        plugin_config,
        test_limit=args.limit,
        overwrite=args.overwrite,
    )
    report = result.report.to_json() | {
        "candidates": {"k": args.k, "temperature": args.temperature},
        "candidate_seconds": result.candidate_seconds,
        "train_seconds": result.train.seconds,
    }
    atomic_write_json(out / "test.json", report)
    print(result.report.headline())
    print(f"candidate task: {result.task_file}; prompt: {out / 'prompt'}")
    metric = task.spec.metric
    metrics = {task.name: {metric: report["metrics"][metric]["value"]}}
    costs = {"seconds": result.train.seconds + result.candidate_seconds}
    record(args, "recursion-textual", backbone, [task], metrics, costs, [str(out)])
    return 0


def _read_report(path: str) -> dict[str, object]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"report '{path}' does not exist") from None
    except json.JSONDecodeError as error:
        raise DataError(f"report '{path}' is not JSON ({error})") from None
    if not isinstance(data, dict) or "predictions" not in data:
        raise DataError(f"'{path}' is not one task's evaluation report (no 'predictions')")
    return data


def _curve(args: argparse.Namespace) -> int:
    from frozenlm.atomic import atomic_write_json
    from frozenlm.recursion.selective import curve_json, plot_curve, selective_curve

    check_output_file(args.out)
    check_output_file(args.plot, "--plot")
    out = args.out
    one, two = _read_report(args.one), _read_report(args.two)
    parameters = args.parameters or load_backbone(args).num_parameters
    points = selective_curve(one, two, parameters=parameters)
    metrics = one.get("metrics")
    name = next(iter(metrics)) if isinstance(metrics, dict) and metrics else "metric"
    metric = f"{one.get('task', '')} {name}"
    atomic_write_json(
        out, curve_json(points, one=args.one, two=args.two, parameters=parameters, metric=metric)
    )
    if args.plot:
        plot_curve({"selective recursion": points}, args.plot, metric=metric)
    for p in points:
        print(
            f"two passes on {p.share:4.0%}: {p.metric:.3f} [{p.low:.3f}, {p.high:.3f}]  "
            f"{p.positions:7.1f} positions, {p.gflops:.2f} GFLOPs per answer"
        )
    return 0
