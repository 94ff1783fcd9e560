"""Continuous batching: rows that join a running batch and leave it when they end decode exactly
as each row alone does."""

from __future__ import annotations

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import Row
from frozenlm.engine.continuous import DecodeBatch, Step
from frozenlm.engine.generation import GenerationConfig, generate_detailed
from frozenlm.engine.prefix_cache import PrefixCache


def _ids(tiny: Backbone, text: str) -> list[int]:
    return list(tiny.tokenizer(text)["input_ids"])


def _alone(tiny: Backbone, row: Row, config: GenerationConfig) -> tuple[list[int], list[float]]:
    made = generate_detailed(tiny, [row.pieces()], config, row.kv)[0]
    return made.tokens, made.logprobs


def _run(batch: DecodeBatch, arrivals: dict[int, list[tuple[Row, GenerationConfig]]]) -> dict:
    """Step the batch, adding rows at the steps given; every row's steps by slot."""
    seen: dict[int, list[Step]] = {}
    step = 0
    while step in arrivals or len(batch) or any(s > step for s in arrivals):
        if step in arrivals:
            rows, configs = zip(*arrivals[step], strict=True)
            for slot in batch.add(list(rows), list(configs)):
                seen[slot] = []
        for event in batch.step():
            seen[event.slot].append(event)
        step += 1
    return seen


def test_rows_joining_and_leaving_decode_as_each_row_alone(tiny: Backbone) -> None:
    g = torch.Generator().manual_seed(0)
    prompt = torch.randn(4, tiny.hidden_size, generator=g)  # one task's soft prompt
    kv = PrefixCache.compute(tiny, [_ids(tiny, "System: be brief.\n")])  # a deep prompt's
    rows = [
        Row(_ids(tiny, "Review: a fine film\nLabel:")),
        Row(_ids(tiny, "Review: dull\nLabel:"), prompt),
        Row(_ids(tiny, "Review: a long and winding story\nLabel:"), prompt),
        Row(_ids(tiny, "Q: who?\nA:"), torch.randn(3, tiny.hidden_size, generator=g), soft_at=2),
        Row(_ids(tiny, "Q: where is it?\nA:"), kv=kv),
    ]
    configs = [GenerationConfig(max_new_tokens=n, stop=(), top_logprobs=2) for n in (6, 3, 9, 1, 5)]
    arrivals = {0: [(rows[0], configs[0]), (rows[1], configs[1])], 2: [(rows[2], configs[2])]}
    arrivals[4] = [(rows[3], configs[3]), (rows[4], configs[4])]
    seen = _run(DecodeBatch(tiny), arrivals)
    assert len(seen) == len(rows)
    for slot, (row, config) in enumerate(zip(rows, configs, strict=True)):
        tokens, logprobs = _alone(tiny, row, config)
        steps = seen[slot]
        assert [s.token for s in steps if s.token is not None] == tokens
        served = [s.logprob for s in steps if s.token is not None]
        assert served == pytest.approx(logprobs, abs=1e-4)
        assert steps[-1].finished in ("stop", "length") and all(
            s.finished is None for s in steps[:-1]
        )
        assert len(steps[-1].top) == 2


def test_a_stop_string_ends_a_row_and_the_rest_go_on(tiny: Backbone) -> None:
    row = Row(_ids(tiny, "Review: a fine film\nLabel:"))
    free = generate_detailed(tiny, [row.pieces()], GenerationConfig(max_new_tokens=6, stop=()))[0]
    text = tiny.tokenizer.decode(free.tokens[:3], skip_special_tokens=True)
    stop = text[-2:] if len(text.strip()) >= 2 else text
    batch = DecodeBatch(tiny)
    slots = batch.add([row, row], [GenerationConfig(6, (stop,)), GenerationConfig(6, ())])
    events: dict[int, list[Step]] = {s: [] for s in slots}
    while len(batch):
        for e in batch.step():
            events[e.slot].append(e)
    stopped, free_row = events[slots[0]], events[slots[1]]
    assert stopped[-1].finished == "stop" and stop not in stopped[-1].text
    assert len(stopped) <= 3 < len(free_row) == 6
    assert [e.token for e in free_row] == free.tokens


def test_a_cancelled_row_leaves_and_the_others_are_unchanged(tiny: Backbone) -> None:
    rows = [Row(_ids(tiny, "Review: dull\nLabel:")), Row(_ids(tiny, "Q: a longer question?\nA:"))]
    config = GenerationConfig(max_new_tokens=5, stop=())
    batch = DecodeBatch(tiny)
    first, second = batch.add(rows, [config, config])
    events = [e.token for e in batch.step() if e.slot == second]
    batch.cancel([first])
    assert len(batch) == 1
    while len(batch):
        events += [e.token for e in batch.step()]
    assert events == _alone(tiny, rows[1], config)[0]


def test_sampled_rows_do_not_depend_on_their_neighbours(tiny: Backbone) -> None:
    row = Row(_ids(tiny, "Once upon a time"))
    sampled = GenerationConfig(max_new_tokens=6, stop=(), temperature=1.0, seed=7)
    alone = DecodeBatch(tiny)
    alone.add([row], [sampled])
    tokens_alone = [e.token for _ in range(6) for e in alone.step()]
    crowded = DecodeBatch(tiny)
    other = Row(_ids(tiny, "Review: a fine film"))
    slots = crowded.add([other, row, other], [GenerationConfig(6, ()), sampled, sampled])
    tokens = []
    while len(crowded):
        tokens += [e.token for e in crowded.step() if e.slot == slots[1]]
    assert tokens == tokens_alone
