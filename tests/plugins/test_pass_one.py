"""The recursive LM's first pass: states that depend on the input alone, cached in memory and on
disk (safetensors), bounded, and never trusted when unreadable."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_tensors

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import BatchBudget, Row, hidden_rows
from frozenlm.engine.splice import splice
from frozenlm.plugins.pass_one import FirstPass, StateCache
from frozenlm.plugins.protocol import SoftPosition
from frozenlm.tasks import load_task


def _first_pass(tiny: Backbone, cache: StateCache | None, **kw: object) -> FirstPass:
    options: dict[str, object] = {
        "layer": -1,
        "max_tokens": 16,
        "chat_template": True,
        "prompts": {},
        "position": SoftPosition.INPUT,
        "cache": cache,
    }
    return FirstPass(tiny, **(options | kw))  # type: ignore[arg-type]


def test_hidden_rows_equal_each_row_alone_at_any_layer(tiny: Backbone) -> None:
    rows = [Row([5, 6, 7, 8, 9]), Row([10, 11]), Row([12, 13, 14])]
    keep = [3, 2, 3]
    for layer in (-1, 1):
        batched = hidden_rows(tiny, rows, keep, layer, BatchBudget(tokens=4096, rows=8))
        for row, k, states in zip(rows, keep, batched, strict=True):
            alone = splice(tiny, [row.pieces()])
            with torch.no_grad():
                full = tiny.forward(
                    alone.embeds, alone.attention_mask, alone.position_ids, layer=layer
                )
            assert states.shape == (k, tiny.hidden_size)
            assert torch.allclose(states, full[0, -k:], atol=1e-5)
    last = hidden_rows(tiny, rows[:1], [3], -1)[0]
    middle = hidden_rows(tiny, rows[:1], [3], 1)[0]
    assert not torch.allclose(last, middle)  # the layer option is read
    with pytest.raises(ValueError, match="positions of its own"):
        hidden_rows(tiny, rows[1:2], [5])


def test_cache_survives_a_new_process_and_refuses_a_corrupt_file(tmp_path: Path) -> None:
    cache = StateCache(tmp_path)
    states = torch.randn(4, 8)
    cache.put("ab" * 32, states)
    fresh = StateCache(tmp_path)  # nothing in memory: read from disk
    got = fresh.get("ab" * 32)
    assert got is not None and torch.equal(got, states) and fresh.hits == 1
    path = next(tmp_path.glob("*/*.safetensors"))
    path.write_bytes(b"not safetensors")
    again = StateCache(tmp_path)
    assert again.get("ab" * 32) is None and again.misses == 1
    assert not path.exists()  # deleted, recomputed next time


def test_disk_cache_stays_under_its_bound_dropping_the_least_recently_used(
    tmp_path: Path,
) -> None:
    one = len(save_tensors({"states": torch.zeros(16, 16)}))
    cache = StateCache(tmp_path, disk_bytes=3 * one, memory_bytes=1)
    for i in range(6):
        cache.put(f"{i:02d}" + "0" * 62, torch.full((16, 16), float(i)))
    files = list(tmp_path.glob("*/*.safetensors"))
    assert 0 < len(files) <= 3
    assert sum(f.stat().st_size for f in files) <= 3 * one
    kept = {f.stem[:2] for f in files}
    assert "05" in kept and "00" not in kept  # the newest stays, the oldest went


def test_memory_cache_is_bounded_in_bytes() -> None:
    cache = StateCache(None, memory_bytes=3 * 64 * 4)
    for i in range(5):
        cache.put(str(i), torch.zeros(8, 8))
    assert cache.get("4") is not None and cache.get("0") is None


def test_first_pass_is_computed_once_and_keyed_by_what_it_depends_on(
    tiny: Backbone, tmp_path: Path
) -> None:
    task = load_task("sentiment")
    examples = list(task.train[:5])
    cache = StateCache(tmp_path)
    first = _first_pass(tiny, cache)
    states = first.states(task.spec, examples)
    assert cache.misses == 5 and all(s.shape[1] == tiny.hidden_size for s in states)
    again = first.states(task.spec, list(reversed(examples)))
    assert cache.misses == 5 and cache.hits == 5  # reused, whatever the batch
    assert torch.allclose(again[-1], states[0])
    prompt = {"sentiment": torch.randn(3, tiny.hidden_size)}
    prompted = _first_pass(tiny, cache, prompts=prompt)
    other = prompted.states(task.spec, examples[:1])
    assert cache.misses == 6 and not torch.allclose(other[0], states[0])  # a new key
    assert (
        prompted.positions(task.spec, examples[:1])[0]
        == first.positions(task.spec, examples[:1])[0] + 3
    )
    layer1 = _first_pass(tiny, cache, layer=1).states(task.spec, examples[:1])
    assert cache.misses == 7 and not torch.allclose(layer1[0], states[0])


def test_first_pass_keeps_the_last_positions_of_the_input(tiny: Backbone) -> None:
    task = load_task("sentiment")
    long = max(task.train, key=lambda ex: len(ex.fields["text"]))
    first = _first_pass(tiny, None, max_tokens=4)
    assert first.states(task.spec, [long])[0].shape == (4, tiny.hidden_size)
    with pytest.raises(Exception, match="outside this backbone"):
        _first_pass(tiny, None, layer=99)
