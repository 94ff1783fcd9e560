from __future__ import annotations

import pytest

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.qa.reader import (
    CLOSED_INSTRUCTION,
    READ_INSTRUCTION,
    ContextPacker,
    ReaderConfig,
    reader_task,
)


def test_packed_prompts_fill_the_budget_without_cutting_the_question(
    tiny: Backbone, toy_qa
) -> None:
    config = ReaderConfig(budget=160, max_new_tokens=8)
    packer = ContextPacker(tiny, reader_task(toy_qa, [], []), config)
    example = toy_qa.test[0]
    ranked = list(range(len(toy_qa.corpus)))
    packed = packer.pack(example, ranked, toy_qa.corpus)
    assert 1 <= len(packed.positions) < len(toy_qa.corpus)
    assert packed.positions == tuple(ranked[: len(packed.positions)])
    prompt = packer.prompter.render(reader_task(toy_qa, [example], [packed.context]).test[0])
    assert not prompt.truncated_input
    assert len(prompt.ids) + config.max_new_tokens <= config.budget
    assert example.question in prompt.text
    # one more passage would not have fitted
    more = packer.pack(example, ranked, toy_qa.corpus)
    assert more == packed
    wider = ContextPacker(tiny, reader_task(toy_qa, [], []), ReaderConfig(budget=320))
    assert len(wider.pack(example, ranked, toy_qa.corpus).positions) > len(packed.positions)


def test_few_shot_demonstrations_count_against_the_budget(tiny: Backbone, toy_qa) -> None:
    zero = ContextPacker(
        tiny, reader_task(toy_qa, [], []), ReaderConfig(budget=240, method="zero-shot")
    )
    few = ContextPacker(
        tiny, reader_task(toy_qa, [], []), ReaderConfig(budget=240, method="few-shot", shots=3)
    )
    ranked = list(range(len(toy_qa.corpus)))
    example = toy_qa.test[1]
    assert len(few.pack(example, ranked, toy_qa.corpus).positions) < len(
        zero.pack(example, ranked, toy_qa.corpus).positions
    )


def test_closed_book_has_its_own_instruction(toy_qa) -> None:
    assert reader_task(toy_qa, [], [], context="closed").spec.instruction == CLOSED_INSTRUCTION
    assert reader_task(toy_qa, [], []).spec.instruction == READ_INSTRUCTION
    demos = reader_task(toy_qa, [], []).train
    assert len(demos) == len(toy_qa.train)
    assert all(d.fields["context"] == "" for d in demos)


def test_budget_must_leave_room_for_the_answer() -> None:
    with pytest.raises(ConfigError, match="must exceed max_new_tokens"):
        ReaderConfig(budget=16, max_new_tokens=16)
