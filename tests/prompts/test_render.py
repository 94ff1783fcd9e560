"""Prompt rendering: exact text per framing, continuation tokenization, budget, CoT."""

from __future__ import annotations

import logging

import pytest

from frozenlm.errors import ConfigError, DataError
from frozenlm.prompts.render import PromptConfig, Prompter, RenderedPrompt
from frozenlm.tasks.builtin import load_builtin
from frozenlm.tasks.spec import Example, TaskSpec

SENTIMENT = TaskSpec(
    name="toy-sentiment",
    kind="classification",
    input_fields=("text",),
    instruction="Classify the sentiment of the review.",
    template="Review: {text}",
    labels={"pos": "positive", "neg": "negative"},
)
TRIVIA = TaskSpec(
    name="toy-trivia",
    kind="generation",
    input_fields=("question",),
    instruction="Answer the question.",
    template="{question}",
    metric="exact_match",
)
PAIR = TaskSpec(
    name="toy-pair",
    kind="classification",
    input_fields=("premise", "hypothesis"),
    instruction="Does the premise entail the hypothesis? Answer yes or no.",
    template="Premise: {premise}\nHypothesis: {hypothesis}",
    labels={"yes": "yes", "no": "no"},
)
DEMOS = (
    Example("d1", {"text": "A delight from start to finish."}, "pos"),
    Example("d2", {"text": "Dull and far too long."}, "neg"),
)
TEST = Example("t1", {"text": "The acting was superb."}, "pos")
VERBALIZERS = (  # every verbalizer of the built-in tasks
    "positive",
    "negative",
    "business",
    "entertainment",
    "politics",
    "sport",
    "technology",
    "abbreviation",
    "description",
    "entity",
    "person",
    "location",
    "number",
    "neutral",
)


def prompter(tokenizer, spec=SENTIMENT, max_tokens=2048, answer_tokens=4, **config) -> Prompter:
    cfg = PromptConfig(**config)
    return Prompter(spec, tokenizer, cfg, max_tokens=max_tokens, answer_tokens=answer_tokens)


def test_plain_framing_exact_text(tokenizer):
    p = prompter(tokenizer, shots=2, chat_template=False)
    rendered = p.render(TEST, DEMOS)
    assert rendered.text == (
        "Classify the sentiment of the review. Answer with one of: positive, negative.\n\n"
        "Review: A delight from start to finish.\nAnswer: positive\n\n"
        "Review: Dull and far too long.\nAnswer: negative\n\n"
        "Review: The acting was superb.\nAnswer:"
    )
    assert rendered.ids == tokenizer(rendered.text)["input_ids"]
    assert (rendered.n_demos, rendered.dropped_demos, rendered.truncated_input) == (2, 0, False)
    assert (
        p.continuation_ids("positive")
        == tokenizer(" positive", add_special_tokens=False)["input_ids"]
    )


def test_qa_framing_exact_text(tokenizer):
    rendered = prompter(tokenizer, framing="qa", chat_template=False).render(TEST, DEMOS)
    assert rendered.text == (
        "Classify the sentiment of the review. Answer with one of: positive, negative.\n\n"
        "Q: Review: A delight from start to finish.\nA: positive\n\n"
        "Q: Review: Dull and far too long.\nA: negative\n\n"
        "Q: Review: The acting was superb.\nA:"
    )


def test_chat_template_exact_text(tokenizer):
    p = prompter(tokenizer, framing="qa")
    rendered = p.render(TEST, DEMOS)
    assert rendered.text == (
        "<|im_start|>system\n"
        "Classify the sentiment of the review. Answer with one of: positive, negative.<|im_end|>\n"
        "<|im_start|>user\nQ: Review: A delight from start to finish.<|im_end|>\n"
        "<|im_start|>assistant\npositive<|im_end|>\n"
        "<|im_start|>user\nQ: Review: Dull and far too long.<|im_end|>\n"
        "<|im_start|>assistant\nnegative<|im_end|>\n"
        "<|im_start|>user\nQ: Review: The acting was superb.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "SmolLM" not in rendered.text  # the template's default system prompt is replaced
    assert rendered.ids == tokenizer(rendered.text, add_special_tokens=False)["input_ids"]
    assert (
        p.continuation_ids("positive")
        == tokenizer("positive", add_special_tokens=False)["input_ids"]
    )


def test_chat_requested_without_template_falls_back_to_plain(tokenizer):
    class NoTemplate:
        chat_template = None

        def __call__(self, *args, **kwargs):
            return tokenizer(*args, **kwargs)

        def decode(self, ids):
            return tokenizer.decode(ids)

    rendered = prompter(NoTemplate()).render(TEST)
    assert rendered.text.endswith("Review: The acting was superb.\nAnswer:")


def test_instruction_lists_labels_only_when_missing(tokenizer):
    pair = prompter(tokenizer, spec=PAIR, chat_template=False)
    assert pair.instruction == "Does the premise entail the hypothesis? Answer yes or no."
    example = Example("p1", {"premise": "A man sleeps.", "hypothesis": "A man rests."}, "yes")
    assert pair.render(example).text == (
        "Does the premise entail the hypothesis? Answer yes or no.\n\n"
        "Premise: A man sleeps.\nHypothesis: A man rests.\nAnswer:"
    )
    override = prompter(tokenizer, instruction="Is it good?", chat_template=False)
    assert override.instruction == "Is it good? Answer with one of: positive, negative."
    assert override.render(TEST).text.startswith("Is it good? Answer with one of")


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("framing", ["plain", "qa"])
def test_continuation_joins_prefix_exactly(tokenizer, chat, framing):
    spec = TaskSpec(
        name="all-verbalizers",
        kind="classification",
        input_fields=("text",),
        instruction="Pick a label.",
        template="Text: {text}",
        labels={v: v for v in VERBALIZERS},
    )
    p = prompter(tokenizer, spec=spec, framing=framing, chat_template=chat)
    demos = [Example(f"d{i}", {"text": f"example {i}"}, v) for i, v in enumerate(VERBALIZERS[:3])]
    rendered = p.render(Example("x", {"text": "what is this?"}, "entity"), demos)
    separator = "" if chat else " "
    for verbalizer in VERBALIZERS:
        continuation = p.continuation_ids(verbalizer)
        joined = tokenizer(rendered.text + separator + verbalizer, add_special_tokens=False)
        assert joined["input_ids"] == rendered.ids + continuation, verbalizer
        assert tokenizer.decode(continuation) == separator + verbalizer


def test_demo_answer(tokenizer):
    assert prompter(tokenizer).demo_answer(DEMOS[1]) == "negative"
    trivia = prompter(tokenizer, spec=TRIVIA)
    assert trivia.demo_answer(Example("q", {"question": "2+2?"}, "4", ("4", "four"))) == "4"
    with pytest.raises(DataError, match="'maybe'"):
        prompter(tokenizer).demo_answer(Example("bad", {"text": "x"}, "maybe"))


def test_missing_input_field_is_a_data_error(tokenizer):
    with pytest.raises(DataError, match="lacks the input field"):
        prompter(tokenizer).render(Example("bad", {"review": "x"}, "pos"))


def test_content_free_prompt_replaces_every_input_field(tokenizer):
    p = prompter(tokenizer, spec=PAIR, chat_template=False)
    demo = Example("d", {"premise": "It rains.", "hypothesis": "It is wet."}, "yes")
    rendered = p.render_content_free([demo])
    assert rendered.text.endswith("\n\nPremise: N/A\nHypothesis: N/A\nAnswer:")
    assert "Premise: It rains.\nHypothesis: It is wet.\nAnswer: yes" in rendered.text
    chat = prompter(tokenizer).render_content_free(content="")
    assert chat.text.endswith("<|im_start|>user\nReview: <|im_end|>\n<|im_start|>assistant\n")


def test_budget_drops_demos_first_from_the_front(tokenizer):
    p = prompter(tokenizer, chat_template=False, answer_tokens=3)
    full = p.render(TEST, DEMOS)
    one_demo = p.render(TEST, DEMOS[1:])
    tight = prompter(
        tokenizer, chat_template=False, answer_tokens=3, max_tokens=len(full.ids) + 2
    ).render(TEST, DEMOS)
    assert (tight.n_demos, tight.dropped_demos, tight.truncated_input) == (1, 1, False)
    assert tight.ids == one_demo.ids  # the first (least relevant) demo went
    assert len(tight.ids) + 3 <= len(full.ids) + 2


@pytest.mark.parametrize("chat", [False, True])
def test_budget_truncates_input_after_dropping_all_demos(tokenizer, chat, caplog):
    long_text = " ".join(f"word{i}" for i in range(300))
    example = Example("long", {"text": long_text}, "pos")
    zero_shot = prompter(tokenizer, chat_template=chat).render(Example("e", {"text": ""}, "pos"))
    max_tokens, answer_tokens = len(zero_shot.ids) + 40, 5
    p = prompter(tokenizer, chat_template=chat, max_tokens=max_tokens, answer_tokens=answer_tokens)
    with caplog.at_level(logging.WARNING, logger="frozenlm.prompts.render"):
        first = p.render(example, DEMOS)
        second = p.render(example, DEMOS)
    assert first == second  # deterministic
    assert (first.n_demos, first.dropped_demos, first.truncated_input) == (0, 2, True)
    assert len(first.ids) + answer_tokens <= max_tokens
    assert len(first.ids) + answer_tokens >= max_tokens - 3  # cut no more than needed
    assert "Review: word0 word1" in first.text
    assert "word299" not in first.text
    cue = "<|im_start|>assistant\n" if chat else "\nAnswer:"
    assert first.text.endswith(cue)
    assert p.cut_prompts == 2
    assert len([r for r in caplog.records if "exceeds" in r.getMessage()]) == 1  # warned once


def test_budget_truncates_the_longest_field(tokenizer):
    example = Example("p", {"premise": "x " * 400, "hypothesis": "A short claim."}, "yes")
    p = prompter(tokenizer, spec=PAIR, chat_template=False, max_tokens=80, answer_tokens=2)
    rendered = p.render(example)
    assert rendered.truncated_input
    assert rendered.text.endswith("\nHypothesis: A short claim.\nAnswer:")
    assert len(rendered.ids) + 2 <= 80


def test_budget_too_small_even_for_an_empty_input(tokenizer):
    p = prompter(tokenizer, chat_template=False, max_tokens=12, answer_tokens=2)
    with pytest.raises(ConfigError, match="even with an empty input"):
        p.render(TEST, DEMOS)
    with pytest.raises(ConfigError, match="must exceed"):
        prompter(tokenizer, max_tokens=4, answer_tokens=4)


def test_chain_of_thought_rejected_for_classification(tokenizer):
    with pytest.raises(ConfigError, match="generation tasks only"):
        prompter(tokenizer, chain_of_thought=True)


def test_chain_of_thought_prompt_and_answer_extraction(tokenizer):
    demo = Example("q1", {"question": "What is 2 + 3?"}, "5", ("5",))
    test = Example("q2", {"question": "What is 4 + 4?"}, "8", ("8",))
    plain = prompter(tokenizer, spec=TRIVIA, chain_of_thought=True, chat_template=False)
    assert plain.render(test, [demo]).text == (
        "Answer the question. Think step by step, then give the final answer after 'Answer:'."
        "\n\nWhat is 2 + 3?\nAnswer: 5\n\nWhat is 4 + 4?\nAnswer: Let's think step by step."
    )
    chat = prompter(tokenizer, spec=TRIVIA, chain_of_thought=True)
    text = chat.render(test, [demo]).text
    assert "Think step by step" in text
    assert "<|im_start|>assistant\nAnswer: 5<|im_end|>" in text
    assert text.endswith("What is 4 + 4?<|im_end|>\n<|im_start|>assistant\n")
    assert plain.extract_answer(" 4 plus 4 is 8.\nAnswer: 8.\n\nWhat is") == "8"
    assert plain.extract_answer("Four and four make eight. So the answer is 8.") == "8"
    assert plain.extract_answer("We add them.\n8") == "8"
    direct = prompter(tokenizer, spec=TRIVIA, chat_template=False)
    assert direct.extract_answer(" Paris\n\nWhat is the capital") == "Paris"
    assert direct.extract_answer("Paris<|im_end|>") == "Paris"


def test_bad_config_values():
    with pytest.raises(ConfigError, match="shots"):
        PromptConfig(shots=-1)
    with pytest.raises(ConfigError, match="selection"):
        PromptConfig(selection="best")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="framing"):
        PromptConfig(framing="dialogue")  # type: ignore[arg-type]


def old_render(bounded: Prompter, unbounded: Prompter, example: Example, demos) -> RenderedPrompt:
    """The fitting loop before issue 14, as the reference: drop demonstrations from the front
    one at a time, re-rendering the whole prompt (`unbounded` renders without cutting)."""
    demos = list(demos)
    rendered = unbounded.render(example, demos)
    text, ids = rendered.text, rendered.ids
    dropped = 0
    while demos and len(ids) + bounded.answer_tokens > bounded.max_tokens:
        demos.pop(0)
        dropped += 1
        rendered = unbounded.render(example, demos)
        text, ids = rendered.text, rendered.ids
    if len(ids) + bounded.answer_tokens > bounded.max_tokens:  # truncate the input alone
        alone = bounded.render(example)
        return RenderedPrompt(
            alone.ids, alone.text, 0, dropped, alone.truncated_input, alone.input_start
        )
    return RenderedPrompt(ids, text, len(demos), dropped, False, rendered.input_start)


@pytest.mark.parametrize("task_name", ["sentiment", "trec", "trivia"])
@pytest.mark.parametrize("chat", [False, True])
def test_budget_fit_equals_the_one_at_a_time_loop(tokenizer, task_name, chat):
    task = load_builtin(task_name)
    spec = task.spec
    answer_tokens = None if spec.kind == "classification" else 8
    framing = "qa" if task_name == "trec" else "plain"
    annotate = (lambda ex: f"Hint: {len(ex.fields[spec.input_fields[0]]) % 7}") if chat else None

    def make(max_tokens: int) -> Prompter:
        config = PromptConfig(framing=framing, chat_template=chat)
        return Prompter(
            spec,
            tokenizer,
            config,
            max_tokens=max_tokens,
            answer_tokens=answer_tokens,
            annotate=annotate,
        )

    unbounded = make(10**9)
    demos = list(task.train[:40])
    example = task.test[0]
    alone = len(unbounded.render(example).ids)
    full = len(unbounded.render(example, demos).ids)
    budgets = {alone - 5, alone + 9, alone + 10, (alone + full) // 3, (alone + full) // 2}
    budgets |= {full + 9, full + 10, full + 11, full + 500}
    for shots in (0, 1, 2, 5, 17, 40):
        offered = demos[len(demos) - shots :]
        for max_tokens in sorted(budgets):
            bounded = make(max_tokens)
            assert bounded.render(example, offered) == old_render(
                bounded, unbounded, example, offered
            ), (shots, max_tokens)


def test_budget_fit_of_thousands_of_demos_renders_only_what_it_keeps(tokenizer, monkeypatch):
    task = load_builtin("sentiment")
    p = Prompter(task.spec, tokenizer, PromptConfig(chat_template=True), max_tokens=2048)
    demos = list(task.train) * 4  # more demonstrations than the budget has tokens
    rendered_turns = []
    render_text = p._render_text
    monkeypatch.setattr(
        p,
        "_render_text",
        lambda turns, *a: rendered_turns.append(len(turns)) or render_text(turns, *a),
    )
    rendered = p.render(task.test[0], demos)
    assert 0 < rendered.n_demos < 200 and rendered.dropped_demos == len(demos) - rendered.n_demos
    assert len(rendered.ids) + p.answer_tokens <= 2048
    assert len(rendered_turns) <= 2 * rendered.n_demos.bit_length() + 2  # O(log k) renders
    assert max(rendered_turns) < 2 * rendered.n_demos + 2  # of O(k) demonstrations each
    reference = Prompter(task.spec, tokenizer, PromptConfig(), max_tokens=10**9)
    assert rendered.ids == reference.render(task.test[0], demos[-rendered.n_demos :]).ids
    bigger = reference.render(task.test[0], demos[-rendered.n_demos - 1 :])
    assert len(bigger.ids) + p.answer_tokens > 2048  # one more demonstration would not fit


@pytest.mark.parametrize("chat", [False, True])
def test_fits_says_whether_render_would_cut_without_counting_a_cut(tokenizer, chat, caplog):
    full = prompter(tokenizer, chat_template=chat, answer_tokens=3).render(TEST, DEMOS)
    for budget in range(len(full.ids) - 3, len(full.ids) + 6):
        p = prompter(tokenizer, chat_template=chat, answer_tokens=3, max_tokens=budget)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            fits = p.fits(TEST, DEMOS)
        assert p.cut_prompts == 0 and not caplog.records
        rendered = p.render(TEST, DEMOS)
        assert fits == (rendered.dropped_demos == 0 and not rendered.truncated_input)
        assert fits == (budget >= len(full.ids) + 3)
