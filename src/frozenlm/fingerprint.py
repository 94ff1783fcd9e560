"""Fingerprints that identify a backbone's weights whatever dtype or device they are loaded in.

A plug-in checkpoint records the fingerprint of the weights it was trained on, and loading it on
other weights is refused. Floating tensors are hashed as fp32 on the CPU, so a bfloat16 load of
the same stored weights has the same fingerprint as a float32 one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from torch import nn

from frozenlm.assets import cache_dir
from frozenlm.atomic import atomic_write_json


def _digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Hash (name, dtype, shape, bytes) of each tensor, in the order given; floating tensors are
    hashed as fp32 on the CPU, so a bf16 copy of fp32-exact weights hashes like the original."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.is_floating_point():
            flat = flat.to(torch.float32)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_fingerprint(model: nn.Module) -> str:
    """A short hash of every named tensor (name, dtype, shape, bytes) of `model`, floating
    tensors taken as fp32 (for an fp32 model: exactly its tensors). Use it on the fp32 weights:
    a model cast to bf16 has lost bits and hashes differently."""
    return _digest(sorted(model.state_dict().items()))


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text()).get("weight_map", {}).values()
        return [folder / name for name in sorted(set(shards))]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else sorted(folder.glob("*.safetensors"))


def folder_fingerprint(model: nn.Module, folder: Path) -> str:
    """The fingerprint of the weights stored in `folder`, whatever dtype `model` (loaded from it)
    has now: `weights_fingerprint` of the fp32 model, computed from the stored tensors.

    Each state-dict entry of `model` is read from the folder's safetensors files one tensor at a
    time (`safe_open`) and upcast to fp32 on the CPU; a tied weight the files store once is read
    under the name they store. An entry the files lack (or a folder without safetensors) falls
    back to the loaded tensor, which is exact only if the load dtype holds the stored values.
    The result is cached under `cache_dir()/fingerprints`, keyed by the files' paths, sizes and
    modification times and the transformers version (which decides the state-dict names).
    """
    files = safetensors_files(folder)
    stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files] + [
        transformers.__version__
    ]
    key = hashlib.blake2b(json.dumps(stamp).encode(), digest_size=16).hexdigest()
    cached = cache_dir() / "fingerprints" / f"{key}.json"
    if files and cached.is_file():
        try:
            return str(json.loads(cached.read_text())["fingerprint"])
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    stored: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            stored.update(dict.fromkeys(handle.keys(), file))
    state = model.state_dict()
    aliases: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for name, tensor in state.items():
        aliases.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)

    def source(name: str) -> str | None:
        tensor = state[name]
        names = aliases[(tensor.data_ptr(), tuple(tensor.shape))]
        return next((n for n in [name, *names] if n in stored), None)

    with ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(str(f), framework="pt")) for f in files}

        def entries() -> Iterator[tuple[str, torch.Tensor]]:
            for name in sorted(state):
                stored_name = source(name)
                if stored_name is None:
                    yield name, state[name]
                else:
                    yield name, handles[stored[stored_name]].get_tensor(stored_name)

        fingerprint = _digest(entries())
    if files:
        atomic_write_json(cached, {"fingerprint": fingerprint, "files": stamp})
    return fingerprint
