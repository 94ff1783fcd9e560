"""Prompt design: instruction, few-shot demonstrations, Q:/A: framing, chat template, chain of
thought, and fitting the result into the frozen backbone's context budget."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from frozenlm.errors import ConfigError, DataError
from frozenlm.tasks.spec import Example, TaskSpec

logger = logging.getLogger(__name__)

Selection = Literal["random", "balanced", "nearest"]
Framing = Literal["plain", "qa", "label"]
SELECTIONS: tuple[str, ...] = ("random", "balanced", "nearest")
FRAMINGS: tuple[str, ...] = ("plain", "qa", "label")
CUES = {"plain": "Answer:", "qa": "A:", "label": "Label:"}
"""The text before the answer slot, per framing."""

COT_INSTRUCTION = "Think step by step, then give the final answer after 'Answer:'."
COT_TRIGGER = "Let's think step by step."  # Kojima et al. 2022, zero-shot chain of thought
_ANSWER_MARKERS = re.compile(r"answer:|so the answer is", re.IGNORECASE)


@dataclass(frozen=True)
class PromptConfig:
    """How a task's examples become a prompt (GPT-3 style in-context learning)."""

    shots: int = 0
    """Number k of demonstrations before the test input (0 = zero-shot)."""
    selection: Selection = "balanced"
    """How demonstrations are picked: a fixed seeded sample ("random"), a fixed sample with the
    same count per label ("balanced"), or the k most similar by MiniLM embedding ("nearest")."""
    framing: Framing = "plain"
    """"plain": "<input>\\nAnswer: <answer>"; "qa": "Q: <input>\\nA: <answer>"; "label":
    "<input>\\nLabel: <answer>" (the SuperICL format)."""
    chat_template: bool = True
    """Use the tokenizer's chat template when it has one (system, user and assistant turns)."""
    chain_of_thought: bool = False
    """Generation tasks only: ask the model to think step by step and give the final answer
    after "Answer:" (read back with `Prompter.extract_answer`)."""
    instruction: str | None = None
    """Replaces the task's own instruction when set."""
    seed: int = 0
    """Seed of the demonstration sample and its order."""

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ConfigError(f"shots must be >= 0, got {self.shots}")
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"unknown selection '{self.selection}'; expected one of {', '.join(SELECTIONS)}"
            )
        if self.framing not in FRAMINGS:
            raise ConfigError(
                f"unknown framing '{self.framing}'; expected one of {', '.join(FRAMINGS)}"
            )


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt ready for the backbone: everything before the answer slot."""

    ids: list[int]
    """Token ids of the prefix (special tokens the tokenizer puts first included); no answer."""
    text: str
    """The prefix as text, for inspection and logging (tokenizes to `ids`)."""
    n_demos: int
    """Demonstrations kept in the prompt."""
    dropped_demos: int
    """Demonstrations dropped to fit the context budget."""
    truncated_input: bool
    """The test input was truncated to fit the context budget."""
    input_start: int = 0
    """The test input's first token: `ids[:input_start]` is the text before it (chat template,
    instruction, demonstrations), the same for every input of a task and demonstration set."""


class Prompter:
    """Renders one task's examples into prompts for one tokenizer within a token budget.

    `max_tokens` is the context budget (the backbone's maximum positions, or less);
    `answer_tokens` is reserved after the prefix for the answer: by default (None) the longest
    label verbalizer of a classification task; a generation task passes its max-new-tokens.
    Rendering is deterministic: the same example and demos always give the same prompt.
    """

    def __init__(
        self,
        spec: TaskSpec,
        tokenizer: Any,
        config: PromptConfig,
        *,
        max_tokens: int,
        answer_tokens: int | None = None,
        annotate: Callable[[Example], str] | None = None,
    ) -> None:
        if config.chain_of_thought and spec.kind != "generation":
            raise ConfigError(
                f"chain_of_thought applies to generation tasks only; task '{spec.name}' is "
                f"{spec.kind}"
            )
        if answer_tokens is None and spec.kind != "classification":
            raise ConfigError(
                f"task '{spec.name}' is {spec.kind}: give the tokens to reserve for its answer"
            )
        self.spec = spec
        self.tokenizer = tokenizer
        self.config = config
        self.max_tokens = max_tokens
        self.use_chat = bool(config.chat_template and getattr(tokenizer, "chat_template", None))
        self.instruction = _full_instruction(spec, config)
        self.annotate = annotate
        """Side information shown after each input (demonstrations and test), before the answer
        cue: SuperICL's plug-in prediction and confidence."""
        self.cut_prompts = 0
        """How many rendered prompts had demonstrations dropped or their input truncated."""
        self._lead_ids = [] if self.use_chat else leading_special_ids(tokenizer)
        self._cue = "\n" + CUES[config.framing]
        if config.chain_of_thought and not self.use_chat:
            self._cue += " " + COT_TRIGGER
        self._sep = "" if self.use_chat else " "
        # Continuations are tokenized after a prefix's end so that they join it exactly.
        self._empty_fields = {name: "" for name in spec.input_fields}
        self._empty_ids: list[int] | None = None
        self._anchor_text = self._render_text((), self._empty_fields)
        self._anchor_ids = self._encode_plain(self._anchor_text)
        if answer_tokens is None:  # room for the longest label verbalizer
            answers = [self.continuation_ids(v) for v in spec.labels.values()]
            answer_tokens = max((len(a) for a in answers), default=0)
        if answer_tokens < 0 or max_tokens <= answer_tokens:
            raise ConfigError(
                f"max_tokens ({max_tokens}) must exceed answer_tokens ({answer_tokens}) >= 0"
            )
        self.answer_tokens = answer_tokens

    # -- public API -------------------------------------------------------------------------

    def render(self, example: Example, demos: Sequence[Example] = ()) -> RenderedPrompt:
        """The prompt for `example` after `demos` (most relevant last), cut to the budget.

        Demonstrations are dropped from the front first; with none left, the longest input
        field is truncated from its end. Raises ConfigError if even an empty input cannot fit.
        """
        missing = [name for name in self.spec.input_fields if name not in example.fields]
        if missing:
            raise DataError(
                f"example '{example.id}' of task '{self.spec.name}' lacks the input field(s) "
                f"{', '.join(missing)}"
            )
        turns = [self._demo_turn(demo) for demo in demos]  # each demo formatted once
        fields = {name: example.fields[name] for name in self.spec.input_fields}
        note = self.annotate(example) if self.annotate else ""
        kept, text, ids = self._fit_demos(turns, fields, note)
        dropped = len(turns) - kept
        truncated = not self._fits(ids)
        if truncated:
            text, ids = self._truncate(fields, len(ids), note)
        if dropped or truncated:
            self._note_cut(example, dropped, truncated)
        start = self._input_start(ids, turns[len(turns) - kept :] if kept else ())
        return RenderedPrompt(ids, text, kept, dropped, truncated, start)

    def fits(self, example: Example, demos: Sequence[Example] = ()) -> bool:
        """Whether `example` after all of `demos` renders within the budget uncut (nothing is
        logged or counted: for callers that try contents, such as QA's packing)."""
        turns = [self._demo_turn(demo) for demo in demos]
        fields = {name: example.fields[name] for name in self.spec.input_fields}
        note = self.annotate(example) if self.annotate else ""
        text = self._render_text(turns, fields, note)
        return self._fits(self._encode(text))

    def render_content_free(
        self, demos: Sequence[Example] = (), content: str = "N/A"
    ) -> RenderedPrompt:
        """The same prompt with every input field replaced by `content`.

        Used for contextual calibration (Zhao et al. 2021): the label probabilities the model
        gives to a content-free input measure its bias towards each label.
        """
        fields = {name: content for name in self.spec.input_fields}
        return self.render(Example(id="<content-free>", fields=fields, label=""), demos)

    def continuation_ids(self, answer: str) -> list[int]:
        """Token ids of `answer` as it follows a rendered prefix.

        A leading space follows a plain "Answer:"/"A:" cue; none follows the chat template's
        assistant header. Tokenizing prefix text + continuation text together gives the prefix
        ids followed by these ids (when the tokenizer allows it; checked in the tests).
        """
        full = self._encode_plain(self._anchor_text + self._sep + answer)
        anchor = self._anchor_ids
        if full[: len(anchor)] == anchor:
            return full[len(anchor) :]
        return self._encode_plain(self._sep + answer)

    def demo_answer(self, example: Example) -> str:
        """The text shown as a demonstration's answer: its label's verbalizer or reference."""
        if self.spec.kind == "generation":
            return example.label
        try:
            return self.spec.labels[example.label]
        except KeyError:
            raise DataError(
                f"example '{example.id}' has label '{example.label}', which is not one of task "
                f"'{self.spec.name}' labels ({', '.join(self.spec.labels)})"
            ) from None

    def extract_answer(self, generated_text: str) -> str:
        """The final answer in generated text.

        With chain of thought: the text after the last "Answer:" or "So the answer is" (its first
        line, trailing period removed), else the last non-empty line. Otherwise: the first line.
        """
        eos = getattr(self.tokenizer, "eos_token", None)
        if eos:
            generated_text = generated_text.split(eos)[0]
        if not self.config.chain_of_thought:
            return generated_text.strip().split("\n")[0].strip()
        matches = list(_ANSWER_MARKERS.finditer(generated_text))
        if matches:
            tail = generated_text[matches[-1].end() :].strip()
            answer = tail.split("\n")[0].strip()
        else:
            lines = [line.strip() for line in generated_text.split("\n") if line.strip()]
            answer = lines[-1] if lines else ""
        return answer.removesuffix(".").strip()

    # -- rendering --------------------------------------------------------------------------

    def _input_start(self, ids: Sequence[int], turns: Sequence[tuple[str, str]]) -> int:
        """Tokens `ids` shares with the prompt of an empty input after the same `turns` (so
        where the input begins), leaving the input at least one token."""
        if not turns:
            if self._empty_ids is None:
                self._empty_ids = self._encode(self._render_text((), self._empty_fields))
            empty = self._empty_ids
        else:
            empty = self._encode(self._render_text(turns, self._empty_fields))
        start = 0
        for a, b in zip(ids, empty, strict=False):
            if a != b:
                break
            start += 1
        return min(start, max(len(ids) - 1, 0))

    def _render_text(
        self, turns: Sequence[tuple[str, str]], fields: Mapping[str, str], note: str = ""
    ) -> str:
        """The prompt text from demonstration (question, answer) turns and the test fields."""
        test_input = self._question(self.spec.template.format(**fields), note)
        if self.use_chat:
            return self._render_chat(turns, test_input)
        return self._render_plain(turns, test_input)

    def _question(self, formatted_input: str, note: str = "") -> str:
        """The input as shown, with its framing and the annotation line when there is one."""
        text = "Q: " + formatted_input if self.config.framing == "qa" else formatted_input
        return text + "\n" + note if note else text

    def _demo_turn(self, demo: Example) -> tuple[str, str]:
        """A demonstration as shown: its question (with annotation) and its answer."""
        note = self.annotate(demo) if self.annotate else ""
        return self._question(self.spec.format_input(demo), note), self.demo_answer(demo)

    def _render_plain(self, turns: Sequence[tuple[str, str]], test_input: str) -> str:
        cue = "\n" + CUES[self.config.framing] + " "
        blocks = [self.instruction] if self.instruction else []
        for question, answer in turns:
            blocks.append(question + cue + answer)
        blocks.append(test_input + self._cue)
        return "\n\n".join(blocks)

    def _render_chat(self, turns: Sequence[tuple[str, str]], test_input: str) -> str:
        messages = [{"role": "system", "content": self.instruction}]
        for question, answer in turns:
            if self.config.chain_of_thought:
                answer = "Answer: " + answer
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": answer})
        messages.append({"role": "user", "content": test_input})
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(text)

    def _encode_plain(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode(self, text: str) -> list[int]:
        return self._lead_ids + self._encode_plain(text)

    # -- budget -----------------------------------------------------------------------------

    def _fits(self, ids: Sequence[int]) -> bool:
        return len(ids) + self.answer_tokens <= self.max_tokens

    def _fit_demos(
        self, turns: Sequence[tuple[str, str]], fields: Mapping[str, str], note: str
    ) -> tuple[int, str, list[int]]:
        """The longest suffix of `turns` whose prompt fits: (its length, text, ids).

        This is the prompt that dropping demonstrations from the front one at a time until it
        fits gives, found with O(log k) renders of at most 2k demonstrations, where k is the
        number kept: a galloping search over the kept count, then bisection. It relies on a
        prompt never getting shorter when a demonstration is added, which holds because every
        demonstration adds its own tokens (checked against the one-at-a-time loop in the tests).
        With no suffix fitting, the zero-demonstration prompt is returned (it may not fit).
        """

        def attempt(k: int) -> tuple[int, str, list[int]]:
            text = self._render_text(turns[len(turns) - k :], fields, note)
            return k, text, self._encode(text)

        n = len(turns)
        high = n + 1  # the smallest count known not to fit
        # Each demonstration adds at least one token: with more of them than the budget holds,
        # the full prompt cannot fit, and rendering it would cost O(n).
        if n <= self.max_tokens:
            full = attempt(n)
            if n == 0 or self._fits(full[2]):
                return full
            high = n
        best = attempt(0)
        if not self._fits(best[2]):
            return best
        k = 1  # gallop: 1, 2, 4, ... until a count does not fit
        while k < high:
            tried = attempt(k)
            if not self._fits(tried[2]):
                high = k
                break
            best, k = tried, 2 * k
        while high - best[0] > 1:  # bisect: best[0] fits, high does not
            tried = attempt((best[0] + high) // 2)
            if self._fits(tried[2]):
                best = tried
            else:
                high = tried[0]
        return best

    def _truncate(
        self, fields: Mapping[str, str], n_ids: int, note: str = ""
    ) -> tuple[str, list[int]]:
        """Cut the longest input field token-wise from its end until the prompt fits alone."""
        field_ids = {name: self._encode_plain(value) for name, value in fields.items()}
        caps = {name: len(ids) for name, ids in field_ids.items()}  # tokens kept per field
        cut = dict(fields)
        while True:
            longest = max(caps, key=lambda name: caps[name]) if caps else None
            if longest is None or caps[longest] == 0:
                raise ConfigError(
                    f"task '{self.spec.name}': the prompt does not fit in {self.max_tokens} "
                    f"tokens with {self.answer_tokens} reserved for the answer, even with an "
                    "empty input and no demonstrations; shorten the instruction or raise "
                    "max_tokens"
                )
            overshoot = n_ids + self.answer_tokens - self.max_tokens
            caps[longest] = max(0, caps[longest] - max(1, overshoot))
            kept = self.tokenizer.decode(field_ids[longest][: caps[longest]])
            cut[longest] = kept.rstrip("\ufffd")  # no half of a multi-byte character
            text = self._render_text((), cut, note)
            ids = self._encode(text)
            if self._fits(ids):
                return text, ids
            n_ids = len(ids)

    def _note_cut(self, example: Example, dropped: int, truncated: bool) -> None:
        self.cut_prompts += 1
        if self.cut_prompts == 1:
            logger.warning(
                "task '%s': the prompt for example '%s' exceeds %d tokens (%d reserved for the "
                "answer); dropped %d demonstration(s)%s. Further cuts are counted in "
                "Prompter.cut_prompts and recorded in each RenderedPrompt.",
                self.spec.name,
                example.id,
                self.max_tokens,
                self.answer_tokens,
                dropped,
                " and truncated the input" if truncated else "",
            )


def _full_instruction(spec: TaskSpec, config: PromptConfig) -> str:
    """The task's (or the config's) instruction, with the label list and the CoT request."""
    instruction = (spec.instruction if config.instruction is None else config.instruction).strip()
    parts = [instruction] if instruction else []
    verbalizers = list(dict.fromkeys(spec.labels.values()))
    if spec.kind == "classification" and verbalizers:
        missing = [
            v for v in verbalizers if not re.search(rf"\b{re.escape(v)}\b", instruction, re.I)
        ]
        if missing:
            parts.append(f"Answer with one of: {', '.join(verbalizers)}.")
    if config.chain_of_thought:
        parts.append(COT_INSTRUCTION)
    return " ".join(parts)


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens (e.g. Gemma's BOS) the tokenizer puts before a plain text; often none
    (SmolLM2, Qwen). A chat template writes its own."""
    with_special = list(tokenizer("a")["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start]
    return []
