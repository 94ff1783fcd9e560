"""The request bodies the server accepts, and the checks every request gets before it queues.

Every request field is honoured or refused, never silently dropped:
- honoured: `model`, `prompt` / `messages`, `max_tokens` (chat: or `max_completion_tokens`),
  `stop`, `logprobs`, `top_logprobs`, `temperature` (0, the default here unlike OpenAI's 1,
  is greedy), `n`, `seed` (sampling), `stream` and `stream_options.include_usage`;
- accepted and ignored: `user` (metadata), `top_p` 1 (every token is in the nucleus);
- accepted only at the value that changes nothing, refused with 400 otherwise: `top_p` < 1,
  `best_of` other than 1 or `n`, `echo`, `suffix`, `presence_penalty`, `frequency_penalty`,
  `logit_bias`;
- any other field is refused with 422 (pydantic's "Extra inputs are not permitted").
Text that is not valid Unicode (a lone surrogate such as "\\ud800") is a 400 naming where.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from frozenlm.serve.models import ServeError

MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 8
MAX_NEW_TOKENS = 1024
MAX_CLASSIFY_INPUTS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _Request(_Strict):
    """The fields both generation routes share."""

    model: str = Field(max_length=200)
    max_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)
    stop: str | list[str] | None = Field(None, max_length=4)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = None


class CompletionRequest(_Request):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)


class ChatMessage(_Strict):
    role: str
    content: str


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


Input = str | dict[str, str]


class ClassifyRequest(_Strict):
    """Rank classification by a classification plug-in: each label's probability."""

    model: str = Field(max_length=200)
    input: Input | list[Input] = Field(
        description="one input (its text, or an object of the task's input fields) or a list"
    )


class LoadRequest(_Strict):
    """Load a plug-in folder under the plug-in root (admin)."""

    path: str = Field(min_length=1, max_length=1000)
    name: str | None = Field(None, max_length=64)


NEUTRAL: dict[str, tuple[Any, str]] = {
    "presence_penalty": (0.0, "presence_penalty is not supported: it must be 0"),
    "frequency_penalty": (0.0, "frequency_penalty is not supported: it must be 0"),
    "logit_bias": (None, "logit_bias is not supported"),
    "echo": (False, "echo is not supported"),
    "suffix": (None, "suffix (insertion) is not supported"),
}
"""Fields accepted only at the value (first) that changes nothing; why others are refused."""


def check_supported(request: _Request) -> None:
    """Refuse (400) a field set to a value that would change the answer if it were honoured."""
    for name, value in request.model_dump(include=set(NEUTRAL)).items():
        neutral, reason = NEUTRAL[name]
        if value != neutral and not (neutral is None and not value):
            raise ServeError(400, f"{reason} (got {name}={value!r})")
    if request.top_p < 1:
        raise ServeError(400, f"top_p is not supported: it must be 1 (got top_p={request.top_p})")
    best_of = request.best_of if isinstance(request, CompletionRequest) else None
    if best_of is not None and best_of not in (1, request.n):
        raise ServeError(400, f"best_of must be 1 or n: choices are not re-ranked (got {best_of})")
    if request.stream_options is not None and not request.stream:
        raise ServeError(400, "stream_options needs stream: true")
    for i, text in enumerate(
        [request.stop] if isinstance(request.stop, str) else request.stop or []
    ):
        check_unicode(f"stop[{i}]", text)


def check_unicode(what: str, text: str) -> None:
    """Refuse (400) text holding a lone surrogate, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ServeError(
            400,
            f"{what} is not valid Unicode: a lone surrogate "
            f"{text[err.start]!r} at character {err.start}",
        ) from None


def chat_max_tokens(request: ChatRequest) -> int:
    """The chat route's token limit: `max_completion_tokens` or `max_tokens`, not both apart."""
    if request.max_completion_tokens is None:
        return request.max_tokens
    if "max_tokens" in request.model_fields_set and request.max_tokens != (
        request.max_completion_tokens
    ):
        raise ServeError(
            400,
            f"max_tokens ({request.max_tokens}) and max_completion_tokens "
            f"({request.max_completion_tokens}) disagree; give one",
        )
    return request.max_completion_tokens


class FineTuneRequest(_Strict):
    """A fine-tuning job (OpenAI's shape; `method.type` names the plug-in)."""

    model: str = Field(max_length=200)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, lt=2**31)
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = Field(None, max_length=0)
