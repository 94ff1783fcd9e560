"""Property: a saved plug-in, however it was damaged or hand-edited, loads and scores or is
refused with a `FrozenLMError`, never another exception."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_safetensors

from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.errors import FrozenLMError
from frozenlm.plugins.checkpoint import PLUGIN_JSON, PLUGIN_TENSORS, save_checkpoint
from frozenlm.plugins.registry import load_plugin, plugin_meta
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import Example, load_task

JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 100),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.lists(st.integers(-1, 70), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def saved(tiny: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real soft-prompt checkpoint of the built-in trec task on the tiny backbone."""
    task = load_task("trec")
    config = SoftPromptConfig(length=4)
    plugin = SoftPromptSet.from_config(config, tiny, [task.spec], seed=0)
    folder = tmp_path_factory.mktemp("ckpt") / "sp"
    meta = plugin_meta("soft-prompt", to_json(config), tiny, [task], ["trec"])
    save_checkpoint(folder, plugin.tensors(), meta)
    return folder


def _rewrite_tensors(folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the tensors and make the JSON agree (sha256, names, shapes): a careful hand-edit."""
    blob = save_safetensors(tensors)
    (folder / PLUGIN_TENSORS).write_bytes(blob)
    meta = json.loads((folder / PLUGIN_JSON).read_text())
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    meta["tensors"] = {
        n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
        for n, t in tensors.items()
    }
    (folder / PLUGIN_JSON).write_text(json.dumps(meta))


@st.composite
def damage(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """A few edits: byte flips, truncation, consistent tensor edits, JSON key edits."""
    kinds = st.sampled_from(["flip", "truncate", "tensor", "json", "drop-key", "drop-file"])
    edits = []
    for kind in draw(st.lists(kinds, min_size=1, max_size=3)):
        if kind == "flip":
            edits.append(
                (
                    kind,
                    (
                        draw(st.sampled_from([PLUGIN_JSON, PLUGIN_TENSORS])),
                        draw(st.integers(0, 10_000)),
                        draw(st.integers(1, 255)),
                    ),
                )
            )
        elif kind == "truncate":
            edits.append(
                (
                    kind,
                    (draw(st.sampled_from([PLUGIN_JSON, PLUGIN_TENSORS])), draw(st.floats(0, 1))),
                )
            )
        elif kind == "tensor":
            shape = draw(st.lists(st.integers(0, 70), min_size=0, max_size=3))
            dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool]))
            name = draw(st.sampled_from(["prompt.trec", "prompt.other", "prompt.*", "x"]))
            edits.append((kind, (name, shape, dtype, draw(st.booleans()))))
        elif kind == "json":
            path = draw(st.sampled_from([
                ["kind"], ["plugin_config", "length"], ["plugin_config", "init"],
                ["plugin_config", "shared"], ["plugin_config", "extra"], ["format"],
                ["backbone", "fingerprint"], ["backbone", "hidden_size"], ["tasks"],
                ["task_sources"], ["tensors"], ["sha256"], ["plugin_config"],
            ]))  # fmt: skip
            edits.append((kind, (path, draw(JSON_VALUES))))
        elif kind == "drop-key":
            edits.append(
                (
                    kind,
                    draw(
                        st.sampled_from(
                            [
                                "kind",
                                "plugin_config",
                                "tasks",
                                "backbone",
                                "tensors",
                                "task_sources",
                            ]
                        )
                    ),
                )
            )
        else:
            edits.append((kind, draw(st.sampled_from([PLUGIN_JSON, PLUGIN_TENSORS]))))
    return edits


def _apply(folder: Path, edits: list[tuple[str, Any]]) -> None:
    for kind, arg in edits:
        if kind in ("flip", "truncate") and not (folder / arg[0]).is_file():
            continue  # dropped by an earlier edit
        if kind == "flip":
            name, at, mask = arg
            data = bytearray((folder / name).read_bytes())
            if data:
                data[at % len(data)] ^= mask
            (folder / name).write_bytes(bytes(data))
        elif kind == "truncate":
            name, fraction = arg
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: int(len(data) * fraction)])
        elif kind == "tensor":
            name, shape, dtype, replace_all = arg
            tensor = torch.ones(shape, dtype=dtype)
            try:
                current = json.loads((folder / PLUGIN_JSON).read_text())["tensors"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not isinstance(current, dict):
                continue
            tensors = {name: tensor} if replace_all else {n: torch.zeros(4, 64) for n in current}
            tensors[name] = tensor
            _rewrite_tensors(folder, tensors)
        elif kind in ("json", "drop-key"):
            try:
                meta = json.loads((folder / PLUGIN_JSON).read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict):
                continue
            if kind == "drop-key":
                meta.pop(arg, None)
            else:
                path, value = arg
                node = meta
                for key in path[:-1]:
                    if not isinstance(node.get(key), dict):
                        node[key] = {}
                    node = node[key]
                node[path[-1]] = value
            (folder / PLUGIN_JSON).write_text(json.dumps(meta))
        else:
            (folder / arg).unlink(missing_ok=True)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(damage())
def test_a_damaged_checkpoint_loads_and_scores_or_is_refused(
    tiny: Backbone, saved: Path, edits: list[tuple[str, Any]]
) -> None:
    task = load_task("trec")
    example = Example(id="probe", fields={"text": "What is the capital of France?"}, label="LOC")
    with TemporaryDirectory() as folder:
        copy = Path(folder) / "sp"
        shutil.copytree(saved, copy)
        _apply(copy, edits)
        try:
            plugin, _ = load_plugin(copy, tiny)
            (tokens,) = plugin.soft_tokens(task.spec, [example])
            score_batch(tiny, [ScoreRequest([tokens, [5, 6, 7]], [[8], [9, 10]])])
        except FrozenLMError as err:
            event(f"refused: {type(err).__name__}")
            assert str(err)
            return
        event("loaded and scored")
