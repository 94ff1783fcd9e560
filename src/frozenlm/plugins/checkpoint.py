"""Plug-in checkpoints: a folder of safetensors and JSON, written atomically, loaded with checks.

A checkpoint folder holds
- `plugin.safetensors`: the plug-in's tensors (floating point stored as fp32);
- `plugin.json`: format version, frozenlm version, plug-in kind and config, task specs, backbone
  identity, training config, metrics, the tensors' names, shapes and dtypes, and the sha256 of
  `plugin.safetensors`. It is written last: a folder without it is not a checkpoint;
- optionally `training_state.safetensors` + `training_state.json`: what resuming needs
  (optimizer and RNG state as tensors plus JSON, loop counters).

A save builds the whole folder as a hidden sibling and swaps it in, so readers and runs killed
mid-save find the old complete checkpoint or the new one. Nothing here uses pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from frozenlm import __version__
from frozenlm.atomic import siblings, write_folder
from frozenlm.backbone import Backbone
from frozenlm.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PLUGIN_JSON = "plugin.json"
PLUGIN_TENSORS = "plugin.safetensors"
TRAINING_JSON = "training_state.json"
TRAINING_TENSORS = "training_state.safetensors"
_FILLED_IN = ("format", "frozenlm_version", "tensors", "sha256")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded and verified checkpoint."""

    tensors: dict[str, torch.Tensor]
    """Plug-in tensors by name (floating point as fp32)."""
    meta: dict[str, Any]
    """The content of plugin.json."""
    folder: Path
    """The folder it was read from."""


def per_task_tensors(
    tensors: Mapping[str, torch.Tensor], prefix: str, kind: str, source: str
) -> dict[str, torch.Tensor]:
    """`tensors` named `<prefix>.<task>`, by task; a tensor of another name, or none at all,
    raises CheckpointError naming `kind` (e.g. "soft prompt") and `source`."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        task = name.removeprefix(prefix + ".")
        if task == name or not task:
            raise CheckpointError(
                f"{source} holds the tensor '{name}', which is not a {kind} ('{prefix}.<task>')"
            )
        out[task] = tensor
    if not out:
        raise CheckpointError(f"{source} holds no {kind} tensor ('{prefix}.<task>')")
    return out


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(
    folder: str | Path,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    training_tensors: Mapping[str, torch.Tensor] | None = None,
    training_meta: Mapping[str, Any] | None = None,
) -> None:
    """Write a checkpoint folder atomically, replacing the checkpoint already there.

    Floating-point plug-in tensors are stored as fp32 and must be finite; training-state tensors
    keep their dtype. "format", "frozenlm_version", "tensors" and "sha256" are filled in.
    """
    folder = Path(folder)
    plugin = {name: _stored(t, fp32=True) for name, t in tensors.items()}
    for name, tensor in plugin.items():
        if not _is_finite(tensor):
            raise CheckpointError(
                f"cannot save checkpoint '{folder}': tensor '{name}' holds NaN or inf values"
            )
    files: dict[str, bytes] = {}
    if training_tensors is not None or training_meta is not None:
        state = {name: _stored(t, fp32=False) for name, t in (training_tensors or {}).items()}
        files[TRAINING_TENSORS] = save_safetensors(state)
        head: dict[str, Any] = {"format": FORMAT_VERSION}
        described = _described(head, training_meta or {}, state, files[TRAINING_TENSORS])
        files[TRAINING_JSON] = _json_bytes(folder / TRAINING_JSON, described)
    files[PLUGIN_TENSORS] = save_safetensors(plugin)
    head = {"format": FORMAT_VERSION, "frozenlm_version": __version__}
    described = _described(head, meta, plugin, files[PLUGIN_TENSORS])
    files[PLUGIN_JSON] = _json_bytes(folder / PLUGIN_JSON, described)  # last: marks completion
    write_folder(folder, files, marker=PLUGIN_JSON)


def _stored(tensor: torch.Tensor, *, fp32: bool) -> torch.Tensor:
    """A detached, contiguous CPU copy that shares memory with nothing (safetensors needs it)."""
    tensor = tensor.detach().cpu()
    if fp32 and tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.clone(memory_format=torch.contiguous_format)


def _described(
    head: Mapping[str, Any],
    meta: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    blob: bytes,
) -> dict[str, Any]:
    """`head`, then `meta`, then the tensors' names, shapes and dtypes and the sha256 of `blob`."""
    out = dict(head) | {key: value for key, value in meta.items() if key not in _FILLED_IN}
    out["tensors"] = {
        name: {"shape": list(t.shape), "dtype": _dtype_name(t)} for name, t in tensors.items()
    }
    out["sha256"] = hashlib.sha256(blob).hexdigest()
    return out


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _json_bytes(path: Path, data: Any) -> bytes:
    """Indented JSON; non-finite floats are written as Python's json writes them (Infinity)."""
    try:
        return (json.dumps(data, indent=2) + "\n").encode()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot write '{path}': its content is not JSON ({err})") from err


# ------------------------------------------------------------------------------------ reading
def checkpoint_folder(path: str | Path) -> Path:
    """A checkpoint folder, or the `best/` checkpoint inside a training output folder."""
    folder = Path(path)
    if (folder / "best" / "plugin.json").is_file() and not (folder / "plugin.json").is_file():
        return folder / "best"
    return folder


def load_checkpoint(
    folder: str | Path,
    *,
    backbone: Backbone | None = None,
    allow_other_backbone: bool = False,
    expected_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Checkpoint:
    """Load and verify a checkpoint; any problem raises CheckpointError naming it.

    With `backbone`, a checkpoint trained on other weights is refused unless
    `allow_other_backbone` (then a warning is logged); another hidden size is always refused.
    `expected_shapes` lists every tensor the checkpoint must hold, with its shape.
    """
    path = _readable_folder(Path(folder))
    meta = _read_json(path / PLUGIN_JSON)
    if backbone is not None:
        _check_backbone(path, meta, backbone, allow_other_backbone)
    tensors = _read_tensors(path / PLUGIN_TENSORS, meta)
    if expected_shapes is not None:
        expected = {name: list(shape) for name, shape in expected_shapes.items()}
        if set(tensors) != set(expected):
            raise CheckpointError(
                f"checkpoint '{path}' holds tensors {sorted(tensors)}, expected {sorted(expected)}"
            )
        for name, shape in expected.items():
            if list(tensors[name].shape) != shape:
                raise CheckpointError(
                    f"checkpoint '{path}': tensor '{name}' has shape {list(tensors[name].shape)}, "
                    f"expected {shape}"
                )
    for name, tensor in tensors.items():
        if not _is_finite(tensor):
            raise CheckpointError(f"checkpoint '{path}': tensor '{name}' holds NaN or inf values")
    return Checkpoint(tensors=tensors, meta=meta, folder=path)


def load_training_state(
    folder: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The (tensors, JSON) saved for resuming, or None if the folder or its state is absent."""
    folder = Path(folder)
    if not folder.exists() and not siblings(folder, "old"):
        return None
    path = _readable_folder(folder)
    if not (path / TRAINING_JSON).is_file():
        return None
    meta = _read_json(path / TRAINING_JSON)
    tensors = _read_tensors(path / TRAINING_TENSORS, meta)
    return tensors, {key: value for key, value in meta.items() if key not in _FILLED_IN}


def _readable_folder(folder: Path) -> Path:
    """`folder`, or the old checkpoint a save killed mid-swap left renamed aside."""
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"checkpoint '{folder}' is a file, not a checkpoint folder")
    olds = siblings(folder, "old")
    if olds:
        log.warning("checkpoint '%s' is missing; reading '%s' (interrupted save)", folder, olds[-1])
        return olds[-1]
    raise CheckpointError(f"checkpoint folder '{folder}' does not exist")


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """The JSON object in `path`; CheckpointError (with `missing` as the reason when absent)."""
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing ({missing})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"'{path}' is not valid JSON ({err})") from err
    except OSError as err:
        raise CheckpointError(f"'{path}' cannot be read ({err.strerror})") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{path}' holds a JSON {type(meta).__name__}, expected an object")
    return meta


def _read_json(path: Path) -> dict[str, Any]:
    """A checkpoint JSON file with a supported format, a tensor list and a sha256."""
    meta = read_json_object(path, "not a checkpoint, or not saved by frozenlm")
    version = meta.get("format")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"'{path}' has no valid 'format' field (got {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"'{path}' has format {version}, newer than the {FORMAT_VERSION} this frozenlm "
            "reads; upgrade frozenlm to load it"
        )
    described = meta.get("tensors")
    if not isinstance(described, dict) or not all(
        isinstance(d, dict) and isinstance(d.get("shape"), list) for d in described.values()
    ):
        raise CheckpointError(f"'{path}' has no valid 'tensors' field (name -> shape, dtype)")
    if not isinstance(meta.get("sha256"), str):
        raise CheckpointError(f"'{path}' has no 'sha256' field")
    return meta


def _read_tensors(path: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of `path`, verified against the sha256 and tensor list of its JSON."""
    if not path.is_file():
        raise CheckpointError(f"'{path}' is missing")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"'{path}' cannot be read ({err.strerror})") from err
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"'{path}' is corrupted or truncated: its sha256 differs from the one recorded"
        )
    try:
        tensors = load_safetensors(data)
    except SafetensorError as err:
        raise CheckpointError(f"'{path}' cannot be parsed as safetensors ({err})") from err
    described: dict[str, Any] = meta["tensors"]
    if set(tensors) != set(described):
        raise CheckpointError(
            f"'{path}' holds tensors {sorted(tensors)} but its JSON lists {sorted(described)}"
        )
    for name, tensor in tensors.items():
        found = [list(tensor.shape), _dtype_name(tensor)]
        if found != [described[name]["shape"], described[name].get("dtype")]:
            raise CheckpointError(
                f"'{path}': tensor '{name}' is {found[1]} {found[0]} but its JSON says "
                f"{described[name].get('dtype')} {described[name]['shape']}"
            )
    return tensors


def _check_backbone(
    path: Path, meta: Mapping[str, Any], backbone: Backbone, allow_other: bool
) -> None:
    saved = meta.get("backbone")
    if not isinstance(saved, dict):
        saved = {}
    hidden = saved.get("hidden_size")
    if hidden is not None and hidden != backbone.hidden_size:
        raise CheckpointError(
            f"checkpoint '{path}' was made for a backbone of hidden size {hidden}, but "
            f"{backbone.name} has hidden size {backbone.hidden_size}"
        )
    if saved.get("fingerprint") == backbone.fingerprint:
        return
    loaded = f"the loaded {backbone.name} (fingerprint {backbone.fingerprint})"
    message = (
        f"checkpoint '{path}' was trained on backbone {saved.get('name')} (fingerprint "
        f"{saved.get('fingerprint')}), not on {loaded}"
        if saved
        else f"checkpoint '{path}' records no backbone to check against {loaded}"
    )
    if not allow_other:
        raise CheckpointError(f"{message}; pass --allow-other-backbone to load it anyway")
    log.warning("%s; loading it anyway (--allow-other-backbone)", message)


def _is_finite(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())


# ------------------------------------------------------------- optimizer and RNG state as files
_TENSOR, _TUPLE, _FLOAT, _ITEMS = "__tensor__", "__tuple__", "__float__", "__items__"


def optimizer_state_to_tensors(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer `state_dict()` into tensors (named by path, e.g. "state.0.exp_avg")
    and JSON that refers to them. Lossless: python scalars, tuples and int keys survive."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _encode(dict(state_dict), "", tensors)


def optimizer_state_from_tensors(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The inverse of `optimizer_state_to_tensors`, ready for `optimizer.load_state_dict`."""
    state = _decode(meta, tensors)
    if not isinstance(state, dict):
        raise CheckpointError("saved optimizer state is not a state dict")
    return state


def rng_state(
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (and CUDA) RNG, python `random` and optionally `generator` states, as
    (tensors, JSON) for a training state."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if generator is not None:
        state["generator"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _encode(state, "", tensors)


def restore_rng_state(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    generator: torch.Generator | None = None,
) -> None:
    """Set the RNG states saved by `rng_state` (and `generator`'s, if given)."""
    state = _decode(meta, tensors)
    if not isinstance(state, dict) or "torch" not in state or "python" not in state:
        raise CheckpointError("saved RNG state lacks the torch or python state")
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if generator is not None:
        if "generator" not in state:
            raise CheckpointError("saved RNG state holds no generator state to restore")
        generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for `value`; tensors go to `tensors` and leave a {"__tensor__": name} reference."""
    if isinstance(value, torch.Tensor):
        name = path or "tensor"
        while name in tensors:
            name += "_"
        tensors[name] = _stored(value, fp32=False)
        return {_TENSOR: name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, tuple | list):
        items = [_encode(v, f"{path}.{i}".lstrip("."), tensors) for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        paths = {k: f"{path}.{k}".lstrip(".") for k in value}
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, paths[k], tensors) for k, v in value.items()}
        pairs = [[_encode(k, "", {}), _encode(v, paths[k], tensors)] for k, v in value.items()]
        return {_ITEMS: pairs}
    raise TypeError(f"cannot store a {type(value).__name__} (at '{path}') in a training state")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of `_encode`."""
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, inner),) = value.items()
        if key == _TENSOR:
            if inner not in tensors:
                raise CheckpointError(f"saved training state lacks the tensor '{inner}'")
            return tensors[inner]
        if key == _TUPLE:
            return tuple(_decode(v, tensors) for v in inner)
        if key == _FLOAT:
            return float(inner)
        if key == _ITEMS:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}
