"""`frozenlm supericl`: parse its options, run the job, write OUT.json and OUT.jsonl, record it.

Kept beside the SuperICL package so the main CLI module stays a list of commands.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from frozenlm.errors import ConfigError


def add_supericl_command(sub: Any, add_backbone: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add `frozenlm supericl` to the CLI's subcommands."""
    sic = sub.add_parser(
        "supericl",
        help="SuperICL: a small fine-tuned plug-in's predictions in the large model's context",
        description="Fine-tune a small plug-in classifier (MiniLM) on the task, then ask the "
        "large model for each test label after k demonstrations that show the plug-in's "
        "prediction and confidence beside the gold label. Reports ICL alone, the plug-in alone, "
        "SuperICL, the ablations, and how often (and how rightly) the large model overrides the "
        "plug-in. Writes OUT (.json), OUT's .jsonl (per example) and, for the default plug-in, "
        "OUT's .plugin folder (reused by a rerun).",
    )
    sic.add_argument("--task", required=True, help="a classification task name or file")
    sic.add_argument(
        "--plugin", default="default", help="default (MiniLM fine-tuned here) or a HF folder"
    )
    sic.add_argument("--plugin-name", default="MiniLM", help="the plug-in's name in the prompt")
    sic.add_argument("--shots", type=int, default=8, help="demonstrations k")
    sic.add_argument("--selection", choices=["random", "balanced"], default="balanced")
    sic.add_argument(
        "--in-sample-demos",
        action="store_true",
        help="train the plug-in on the demonstrations too (the published script's choice)",
    )
    sic.add_argument("--backend", choices=["local", "openai"], default="local")
    sic.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    sic.add_argument("--model", help="model name at the endpoint")
    sic.add_argument("--api", choices=["completions", "chat"], default="completions")
    sic.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the key")
    sic.add_argument("--chat-template", action="store_true", help="local: use the chat template")
    sic.add_argument("--explanation", action="store_true", help="explain each override")
    sic.add_argument("--no-ablations", action="store_true", help="skip the two ablations")
    sic.add_argument("--split", default="test", choices=["train", "dev", "test"])
    sic.add_argument("--limit", type=int, default=None, help="evaluate the first N examples")
    sic.add_argument("--max-prompt-tokens", type=int, default=2048, help="context budget")
    sic.add_argument("--plugin-epochs", type=int, default=3, help="plug-in training epochs")
    sic.add_argument(
        "--plugin-max-train", type=int, default=2000, help="plug-in training examples (0: all)"
    )
    sic.add_argument("--seed", type=int, default=0)
    sic.add_argument("--out", required=True, help="the result JSON file")
    add_backbone(sic)
    sic.set_defaults(func=run_supericl_command)


def run_supericl_command(args: argparse.Namespace) -> int:
    from frozenlm.atomic import atomic_write_bytes
    from frozenlm.backbone import load_tokenizer, resolve_backbone
    from frozenlm.supericl.backends import Backend, LocalBackend, OpenAIBackend, OpenAIConfig
    from frozenlm.supericl.job import supericl_job
    from frozenlm.supericl.run import VARIANTS, SuperICLConfig
    from frozenlm.supericl.small_classifier import ClassifierTrainConfig
    from frozenlm.tasks import load_task

    if not args.out.endswith(".json"):
        raise ConfigError(f"--out must name a .json file, got '{args.out}'")
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
        backbone = resolve_backbone(args.backbone)
        backend = LocalBackend(backbone, chat_template=args.chat_template)
        tokenizer, max_tokens = backbone.tokenizer, min(args.max_prompt_tokens, backbone.max_length)
    else:
        if not (args.base_url and args.model):
            raise ConfigError("--backend openai needs --base-url URL and --model NAME")
        backend = OpenAIBackend(
            OpenAIConfig(args.base_url, args.model, api=args.api, api_key_env=args.api_key_env)
        )
        tokenizer, max_tokens = load_tokenizer(), args.max_prompt_tokens
    stem = args.out.removesuffix(".json")
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
    from frozenlm.cli.main import _record, _report

    _report(result.headline(), result.to_json(), args.out)
    print(f"wrote {stem}.jsonl (one line per example)")
    if backbone is not None:
        metrics = {
            task.name: {k: v.to_json() | {"n": result.n} for k, v in result.intervals.items()}
        }
        costs = {"seconds": result.seconds, "examples": result.n}
        _record(args, "eval", backbone, [task], metrics, costs, [args.out])
    return 0
