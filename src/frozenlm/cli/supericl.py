"""`frozenlm supericl`: the SuperICL job (`frozenlm.supericl.supericl_job`), written to OUT.json
and OUT.jsonl and recorded."""

from __future__ import annotations

import argparse
import json

from frozenlm.cli.common import (
    add_backbone,
    check_output_file,
    check_output_folder,
    load_backbone,
    record,
    report,
)
from frozenlm.errors import ConfigError

DESCRIPTION = (
    "Fine-tune a small plug-in classifier (MiniLM) on the task, then ask the large model for "
    "each test label after k demonstrations that show the plug-in's prediction and confidence "
    "beside the gold label. Reports ICL alone, the plug-in alone, SuperICL, the ablations, and "
    "how often (and how rightly) the large model overrides the plug-in. Writes OUT (.json), "
    "OUT's .jsonl (per example) and, for the default plug-in, OUT's .plugin folder (reused by a "
    "rerun)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frozenlm.supericl.run import SuperICLConfig
    from frozenlm.supericl.small_classifier import ClassifierTrainConfig

    parser.description = DESCRIPTION
    parser.add_argument("--task", required=True, help="a classification task name or file")
    parser.add_argument(
        "--plugin", default="default", help="default (MiniLM fine-tuned here) or a HF folder"
    )
    parser.add_argument(
        "--plugin-name",
        default=SuperICLConfig.plugin_name,
        help="the plug-in's name in the prompt",
    )
    parser.add_argument("--shots", type=int, default=SuperICLConfig.shots, help="demonstrations k")
    parser.add_argument(
        "--selection", choices=["random", "balanced"], default=SuperICLConfig.selection
    )
    parser.add_argument(
        "--in-sample-demos",
        action="store_true",
        help="train the plug-in on the demonstrations too (the published script's choice)",
    )
    parser.add_argument("--backend", choices=["local", "openai"], default="local")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    parser.add_argument("--model", help="model name at the endpoint")
    parser.add_argument("--api", choices=["completions", "chat"], default="completions")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the key")
    parser.add_argument("--chat-template", action="store_true", help="local: use the chat template")
    parser.add_argument("--explanation", action="store_true", help="explain each override")
    parser.add_argument("--no-ablations", action="store_true", help="skip the two ablations")
    parser.add_argument("--split", default=SuperICLConfig.split, choices=["train", "dev", "test"])
    parser.add_argument(
        "--limit", type=int, default=SuperICLConfig.limit, help="evaluate the first N examples"
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=SuperICLConfig.max_prompt_tokens,
        help="context budget",
    )
    parser.add_argument(
        "--plugin-epochs",
        type=int,
        default=ClassifierTrainConfig.epochs,
        help="plug-in training epochs",
    )
    parser.add_argument(
        "--plugin-max-train",
        type=int,
        default=ClassifierTrainConfig.max_train,
        help="plug-in training examples (0: all)",
    )
    parser.add_argument("--seed", type=int, default=SuperICLConfig.seed)
    parser.add_argument("--out", required=True, help="the result JSON file")
    add_backbone(parser)


def run(args: argparse.Namespace) -> int:
    from frozenlm.atomic import atomic_write_bytes
    from frozenlm.backbone import load_tokenizer
    from frozenlm.supericl import supericl_job
    from frozenlm.supericl.backends import Backend, LocalBackend, OpenAIBackend, OpenAIConfig
    from frozenlm.supericl.run import VARIANTS, SuperICLConfig
    from frozenlm.supericl.small_classifier import ClassifierTrainConfig
    from frozenlm.tasks import load_task

    if not args.out.endswith(".json"):
        raise ConfigError(f"--out must name a .json file, got '{args.out}'")
    stem = args.out.removesuffix(".json")
    check_output_file(args.out)
    check_output_file(stem + ".jsonl", "--out's .jsonl sibling")
    if args.plugin == "default":
        check_output_folder(stem + ".plugin", "--out's .plugin sibling")
    config = SuperICLConfig(
        shots=args.shots,
        selection=args.selection,
        plugin_name=args.plugin_name,
        in_sample_demos=args.in_sample_demos,
        chat_template=args.chat_template,
        explanation=args.explanation,
        variants=("icl", "supericl") if args.no_ablations else VARIANTS,
        split=args.split,
        limit=args.limit,
        max_prompt_tokens=args.max_prompt_tokens,
        seed=args.seed,
    )
    train = ClassifierTrainConfig(
        epochs=args.plugin_epochs, max_train=args.plugin_max_train or None, seed=args.seed
    )
    task = load_task(args.task, seed=args.seed)
    backbone = None
    backend: Backend
    if args.backend == "local":
        backbone = load_backbone(args)
        backend = LocalBackend(backbone, chat_template=args.chat_template)
        tokenizer, max_tokens = backbone.tokenizer, min(args.max_prompt_tokens, backbone.max_length)
    else:
        if not (args.base_url and args.model):
            raise ConfigError("--backend openai needs --base-url URL and --model NAME")
        backend = OpenAIBackend(
            OpenAIConfig(args.base_url, args.model, api=args.api, api_key_env=args.api_key_env)
        )
        tokenizer, max_tokens = load_tokenizer(), args.max_prompt_tokens
    result = supericl_job(
        task,
        backend,
        tokenizer,
        config,
        plugin=args.plugin,
        train=train,
        save_plugin_to=stem + ".plugin" if args.plugin == "default" else None,
        max_tokens=max_tokens,
    )
    lines = "".join(json.dumps(row) + "\n" for row in result.predictions)
    atomic_write_bytes(stem + ".jsonl", lines.encode())
    report(result.headline(), result.to_json(), args.out)
    print(f"wrote {stem}.jsonl (one line per example)")
    if backbone is not None:
        entries: dict[str, object] = {
            k: v.to_json() | {"n": result.n} for k, v in result.intervals.items()
        }
        for name in ("override_rate", "override_accuracy"):  # does the LM overrule usefully?
            if result.metrics.get(name) is not None:
                entries[name] = result.metrics[name]
        metrics = {task.name: entries}
        costs = {"seconds": result.seconds, "examples": result.n}
        record(args, "eval", backbone, [task], metrics, costs, [args.out])
    return 0
