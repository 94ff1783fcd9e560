"""Where SuperICL's large model runs: the local frozen backbone (rank classification over the
label verbalizers) or any OpenAI-compatible HTTP endpoint (log-probabilities of the first answer
token where offered, otherwise the answer text matched against the verbalizers).

A backend turns rendered prompts into label choices and, on request, short explanations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import openai

from frozenlm.assets import cache_dir
from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.engine.generation import GenerationConfig, generate
from frozenlm.errors import ConfigError, FrozenLMError
from frozenlm.evaluation.evaluate import EvalConfig, label_candidates, prompt_rows, score_prompts
from frozenlm.progress import progress
from frozenlm.prompts.render import Prompter, RenderedPrompt, leading_special_ids
from frozenlm.tasks.spec import Task

log = logging.getLogger(__name__)

EXPLAIN_CUE = "\nExplanation for overriding the prediction:"
"""Appended after the chosen label to ask why the model overrode the plug-in (as published)."""
EXPLAIN_TOKENS = 64


class BackendError(FrozenLMError):
    """The large model's endpoint failed or answered something unusable."""


@dataclass
class Choice:
    """The large model's answer to one prompt."""

    label: str | None
    """The chosen task label; None if the answer matched no verbalizer."""
    scores: list[float] | None = None
    """Per-label log-probabilities (task label order), when the backend gives them."""
    raw: str | None = None
    """The answer text, from backends that generate."""


class Backend(Protocol):
    name: str
    uses_chat_template: bool
    """Whether prompts for it should be rendered with the local tokenizer's chat template."""
    calls: int
    """Requests sent to the model over the network (0 for the local backbone)."""
    cache_hits: int
    """Requests answered from the on-disk response cache."""

    def choose(
        self, task: Task, prompter: Prompter, prompts: Sequence[RenderedPrompt]
    ) -> list[Choice]: ...

    def explain(self, prompts: Sequence[str]) -> list[str]: ...


class LocalBackend:
    """The frozen backbone: every label's verbalizer scored after the prompt; the context all
    prompts share (instruction, demonstrations) is computed once."""

    def __init__(
        self, backbone: Backbone, chat_template: bool = True, config: EvalConfig = EvalConfig()
    ) -> None:
        self.backbone = backbone
        self.name = backbone.name
        self.uses_chat_template = chat_template
        self.config = config
        self.calls = 0  # no network requests: the backbone is local
        self.cache_hits = 0

    def choose(
        self, task: Task, prompter: Prompter, prompts: Sequence[RenderedPrompt]
    ) -> list[Choice]:
        labels = list(task.spec.labels)
        candidates = label_candidates(task, prompter)
        rows = prompt_rows(prompts)
        scores = score_prompts(self.backbone, rows, candidates, self.config, task.name)
        return [
            Choice(labels[int(row.argmax())], [round(float(s), 4) for s in row]) for row in scores
        ]

    def explain(self, prompts: Sequence[str]) -> list[str]:
        tokenizer = self.backbone.tokenizer
        chat = self.uses_chat_template and getattr(tokenizer, "chat_template", None)
        lead = [] if chat else leading_special_ids(tokenizer)  # e.g. Gemma's BOS
        rows = [[lead + list(tokenizer(t, add_special_tokens=False)["input_ids"])] for t in prompts]
        config = GenerationConfig(max_new_tokens=EXPLAIN_TOKENS, stop=())
        return [
            first_paragraph(generate(self.backbone, [row], config)[0])
            for row in progress(rows, desc="explanations", leave=False)
        ]


@dataclass(frozen=True)
class OpenAIConfig:
    """An OpenAI-compatible endpoint."""

    base_url: str
    """Up to and including the version, e.g. http://localhost:8000/v1."""
    model: str
    api: Literal["completions", "chat"] = "completions"
    """completions: the prompt as text (as published); chat: the prompt as one user message."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key (none sent when unset, for local servers)."""
    timeout: float = 60.0
    """Seconds per request."""
    retries: int = 4
    """Retries after a timeout, connection error, 408, 409, 429 or 5xx, with the official
    client's exponential backoff (0.5 s doubling to 8 s, with jitter) or the server's
    Retry-After."""
    cache: Path | None = field(default_factory=lambda: cache_dir() / "http-responses")
    """Folder of cached responses (request hash -> JSON); None disables it."""
    answer_tokens: int = 5
    top_logprobs: int = 5


class OpenAIBackend:
    """Any OpenAI-compatible HTTP endpoint, with timeouts, retries and an on-disk cache, so a
    rerun of the same requests spends no calls."""

    uses_chat_template = False

    def __init__(self, config: OpenAIConfig) -> None:
        if not config.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https://: {config.base_url}")
        self.config = config
        self.name = config.model
        self.calls = 0
        """Requests sent over the network (cache hits are not counted)."""
        self.cache_hits = 0
        self.logprobs = True
        """Ask for log-probabilities; turned off if the endpoint refuses them."""
        self._client = openai.OpenAI(
            base_url=config.base_url,
            api_key=os.environ.get(config.api_key_env) or "none",  # local servers need none
            timeout=config.timeout,
            max_retries=config.retries,
        )

    def choose(
        self, task: Task, prompter: Prompter, prompts: Sequence[RenderedPrompt]
    ) -> list[Choice]:
        verbalizers = dict(task.spec.labels)
        out = []
        for prompt in progress(prompts, desc=f"{task.name} {self.name}", leave=False):
            text, top = self._complete(prompt.text, self.config.answer_tokens, stop=["\n"])
            out.append(_match_label(text, top, verbalizers))
        return out

    def explain(self, prompts: Sequence[str]) -> list[str]:
        texts = [self._complete(p, EXPLAIN_TOKENS, [], want_logprobs=False)[0] for p in prompts]
        return [first_paragraph(text) for text in texts]

    # -- HTTP -------------------------------------------------------------------------------

    def _complete(
        self, prompt: str, max_tokens: int, stop: list[str], want_logprobs: bool = True
    ) -> tuple[str, dict[str, float]]:
        """The completion text and the first token's top log-probabilities (may be empty)."""
        c = self.config
        body: dict[str, Any] = {
            "model": c.model,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        if stop:
            body["stop"] = stop
        if c.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        ask = want_logprobs and self.logprobs and c.top_logprobs > 0
        if ask and c.api == "chat":
            body |= {"logprobs": True, "top_logprobs": c.top_logprobs}
        elif ask:
            body["logprobs"] = c.top_logprobs
        try:
            response = self._post(body)
        except BackendError as err:
            if ask and "logprob" in str(err).lower():
                log.warning("%s refuses log-probabilities; matching answer text instead", c.model)
                self.logprobs = False
                return self._complete(prompt, max_tokens, stop, want_logprobs=False)
            raise
        return _parse(response, c.api)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """The endpoint's JSON answer to `body`, from the on-disk cache when it was asked
        before; sent with the official client (its timeouts, retries with backoff and
        Retry-After), the answer kept as the JSON the endpoint sent."""
        c = self.config
        route = "/chat/completions" if c.api == "chat" else "/completions"
        url = c.base_url.rstrip("/") + route
        key = hashlib.sha256(json.dumps([url, body], sort_keys=True).encode()).hexdigest()
        cached = c.cache / key[:2] / f"{key}.json" if c.cache else None
        if cached is not None and cached.is_file():
            self.cache_hits += 1
            return dict(json.loads(cached.read_text()))
        create = self._client.chat.completions if c.api == "chat" else self._client.completions
        self.calls += 1
        try:
            raw = create.with_raw_response.create(**body)
            response = json.loads(raw.http_response.text)
        except openai.APIStatusError as err:
            detail = err.response.text[:300]
            raise BackendError(f"{url} answered HTTP {err.status_code}: {detail}") from None
        except openai.APIConnectionError as err:  # timeouts too
            raise BackendError(
                f"{url} did not answer after {c.retries + 1} attempts: {err}"
            ) from None
        except ValueError as err:
            raise BackendError(f"{url} answered with text that is not JSON: {err}") from None
        if not isinstance(response, dict):
            raise BackendError(f"{url} answered {type(response).__name__}, not a JSON object")
        if cached is not None:
            atomic_write_json(cached, response)
        return response


def first_paragraph(text: str) -> str:
    """The first non-empty paragraph: models often open an explanation with a blank line."""
    return next((p.strip() for p in text.split("\n\n") if p.strip()), "")


def _parse(response: dict[str, Any], api: str) -> tuple[str, dict[str, float]]:
    """Text and first-token top log-probabilities of an OpenAI (chat) completion response."""
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"] if api == "chat" else choice["text"]
        logprobs = choice.get("logprobs") or {}
        top: dict[str, float] = {}
        if api == "chat" and logprobs.get("content"):
            first = logprobs["content"][0]
            top = {t["token"]: float(t["logprob"]) for t in first.get("top_logprobs") or []}
        elif api != "chat" and logprobs.get("top_logprobs"):
            top = {t: float(v) for t, v in (logprobs["top_logprobs"][0] or {}).items()}
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise BackendError(
            f"the endpoint's response is not an OpenAI {api} completion ({err!r}): "
            f"{json.dumps(response)[:200]}"
        ) from None
    return str(text or ""), top


def _match_label(text: str, top: dict[str, float], verbalizers: dict[str, str]) -> Choice:
    """The label the answer names: by the first token's log-probabilities when a listed token
    starts exactly one verbalizer, else by the text (the longest verbalizer it starts with, then
    the first verbalizer it mentions)."""
    scores: dict[str, float] = {}
    for token, logprob in top.items():
        piece = token.strip().lower()
        if not piece:
            continue
        hits = [lab for lab, verb in verbalizers.items() if verb.lower().startswith(piece)]
        if len(hits) == 1:
            scores[hits[0]] = max(scores.get(hits[0], float("-inf")), logprob)
    if scores:
        best = max(scores, key=lambda lab: scores[lab])
        return Choice(best, [scores.get(lab, float("-inf")) for lab in verbalizers], text)
    answer = text.strip().lower()
    by_length = sorted(verbalizers.items(), key=lambda kv: -len(kv[1]))
    for label, verb in by_length:
        if answer.startswith(verb.lower()):
            return Choice(label, None, text)
    found = [
        (answer.find(verb.lower()), label) for label, verb in by_length if verb.lower() in answer
    ]
    return Choice(min(found)[1] if found else None, None, text)
