"""`frozenlm export-peft` and `import-peft`: a soft prompt to and from a PEFT prompt-tuning
adapter, a deep prompt to and from a PEFT prefix-tuning adapter
(`frozenlm.plugins.peft.export_peft_plugin`, `import_peft_plugin`)."""

from __future__ import annotations

import argparse

from frozenlm.cli.common import add_backbone, check_output_folder, load_backbone


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "plugin_dir", metavar="DIR", help="a soft-prompt or deep-prompt folder from frozenlm train"
    )
    parser.add_argument("out_dir", metavar="OUT", help="the PEFT adapter folder to write")
    parser.add_argument("--task", help="which task's prompt (needed when DIR has several)")
    add_backbone(parser)


def run_export(args: argparse.Namespace) -> int:
    from frozenlm.plugins.peft import ADAPTER_CONFIG, export_peft_plugin

    check_output_folder(args.out_dir, "OUT", marker=ADAPTER_CONFIG)
    backbone = load_backbone(args)
    task = export_peft_plugin(args.plugin_dir, args.out_dir, backbone, args.task)
    print(f"exported the '{task}' prompt of {args.plugin_dir} as a PEFT adapter to {args.out_dir}")
    return 0


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "peft_dir", metavar="PEFT_DIR", help="a PEFT prompt-tuning or prefix-tuning adapter folder"
    )
    parser.add_argument("out_dir", metavar="OUT", help="the frozenlm checkpoint folder to write")
    parser.add_argument("--task", required=True, help="the task the prompt is for (name or file)")
    add_backbone(parser)


def run_import(args: argparse.Namespace) -> int:
    from frozenlm.plugins.checkpoint import PLUGIN_JSON
    from frozenlm.plugins.peft import import_peft_plugin

    check_output_folder(args.out_dir, "OUT", marker=PLUGIN_JSON)
    backbone = load_backbone(args)
    method = import_peft_plugin(args.peft_dir, args.out_dir, backbone, args.task)
    where = f"for '{args.task}' in {args.out_dir}"
    print(f"imported {args.peft_dir} as a frozenlm {method} plug-in {where}")
    return 0
