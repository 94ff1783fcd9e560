"""OpenAI-compatible routes over the frozen backbone: `/v1/models`, `/v1/completions` and
`/v1/chat/completions`, greedy decoding with token log-probabilities.

This lets any OpenAI client (SuperICL's HTTP backend included) talk to the local model, and lets
tests run that client against a real server.

Every request field is honoured or refused, never silently dropped:
- honoured: `model`, `prompt` / `messages`, `max_tokens` (chat: or `max_completion_tokens`),
  `stop`, `logprobs`, `top_logprobs`;
- accepted and ignored because they cannot change a greedy answer: `top_p` (the most likely
  token is in every nucleus), `seed` (greedy decoding draws nothing), `user` (metadata);
- accepted only at the value that means greedy, one choice, no streaming, and refused with 400
  otherwise: `temperature` 0 (the default here, unlike OpenAI's 1), `n` 1, `best_of` 1,
  `stream` false, `stream_options` null, `echo` false, `suffix` null, `presence_penalty` 0,
  `frequency_penalty` 0, `logit_bias` empty;
- any other field is refused with 422 (pydantic's "Extra inputs are not permitted").
Bad text answers 400 with the reason: an empty prompt (0 tokens: there is nothing to continue,
and this tokenizer's only BOS-like token is the chat turn marker), text that is not valid
Unicode (a lone surrogate such as "\\ud800"), or a prompt that leaves no room for `max_tokens`
in the model's context.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from frozenlm.backbone import Backbone
from frozenlm.engine.generation import Generation, GenerationConfig, generate_detailed
from frozenlm.prompts.render import leading_special_ids

MAX_TOP_LOGPROBS = 20


class _Request(BaseModel):
    """The fields both routes share; unknown fields are refused (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int = Field(16, ge=1, le=1024)
    stop: str | list[str] | None = None
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None


class CompletionRequest(_Request):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int = Field(1, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    content: str


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=1024)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


REFUSED: dict[str, tuple[Any, str]] = {
    "temperature": (0.0, "decoding is greedy: temperature must be 0"),
    "n": (1, "n must be 1: greedy decoding gives one choice"),
    "best_of": (1, "best_of must be 1: greedy decoding gives one choice"),
    "stream": (False, "streaming is not supported"),
    "stream_options": (None, "stream_options is not supported: streaming is not supported"),
    "echo": (False, "echo is not supported"),
    "suffix": (None, "suffix (insertion) is not supported"),
    "presence_penalty": (0.0, "presence_penalty is not supported: it must be 0"),
    "frequency_penalty": (0.0, "frequency_penalty is not supported: it must be 0"),
    "logit_bias": (None, "logit_bias is not supported"),
}
"""Fields accepted only at the value (first) that greedy decoding honours; the reason (second)
why any other value is refused."""


def check_supported(request: _Request) -> None:
    """Refuse (400) a field set to a value that would change the answer if it were honoured."""
    for field, value in request.model_dump(include=set(REFUSED)).items():
        neutral, reason = REFUSED[field]
        if value != neutral and not (neutral is None and not value):
            raise HTTPException(400, f"{reason} (got {field}={value!r})")


def check_unicode(what: str, text: str) -> None:
    """Refuse (400) text holding a lone surrogate, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise HTTPException(
            400,
            f"{what} is not valid Unicode: a lone surrogate "
            f"{text[err.start]!r} at character {err.start}",
        ) from None


def check_stop(stop: str | list[str] | None) -> None:
    for i, text in enumerate([stop] if isinstance(stop, str) else stop or []):
        check_unicode(f"stop[{i}]", text)


def create_app(backbone: Backbone, model_name: str | None = None) -> FastAPI:
    """A FastAPI app serving `backbone` under `model_name` (default: the backbone's name)."""
    name = model_name or backbone.name
    app = FastAPI(title="frozenlm OpenAI-compatible API")
    lock = asyncio.Lock()  # one forward at a time: the backbone is not re-entrant on 2 cores

    def check_model(requested: str) -> None:
        if requested != name:
            raise HTTPException(404, f"model '{requested}' is not served here; use '{name}'")

    async def run(ids: list[int], max_tokens: int, top: int, stop: Any) -> Generation:
        if not ids:
            raise HTTPException(400, "prompt is empty: it has 0 tokens, give some text")
        room = backbone.max_length - max_tokens
        if len(ids) > room:
            raise HTTPException(
                400,
                f"the prompt has {len(ids)} tokens; at most {room} fit with max_tokens "
                f"{max_tokens} in the model's {backbone.max_length}-token context",
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        config = GenerationConfig(max_new_tokens=max_tokens, stop=stops, top_logprobs=top)
        async with lock:
            return (await asyncio.to_thread(generate_detailed, backbone, [[ids]], config))[0]

    def token_text(token: int) -> str:
        return str(backbone.tokenizer.decode([token]))

    def envelope(
        kind: str, choice: dict[str, Any], prompt: int, out: Generation, max_tokens: int
    ) -> dict[str, Any]:
        """The response around one choice: ids, finish reason and token usage."""
        n = len(out.tokens)
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex[:12]}",
            "object": kind,
            "created": int(time.time()),
            "model": name,
            "choices": [
                {"index": 0, **choice, "finish_reason": "length" if n >= max_tokens else "stop"}
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n},
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "frozenlm"}]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict[str, Any]:
        check_model(request.model)
        check_supported(request)
        check_unicode("prompt", request.prompt)
        check_stop(request.stop)
        if not request.prompt:
            raise HTTPException(400, "prompt is empty: give some text to continue")
        ids = list(backbone.tokenizer(request.prompt)["input_ids"])
        top = request.logprobs or 0
        out = await run(ids, request.max_tokens, top, request.stop)
        logprobs = None
        if request.logprobs is not None:
            logprobs = {
                "tokens": [token_text(t) for t in out.tokens],
                "token_logprobs": out.logprobs,
                "top_logprobs": [{token_text(t): lp for t, lp in step} for step in out.top],
            }
        choice = {"text": out.text, "logprobs": logprobs}
        return envelope("text_completion", choice, len(ids), out, request.max_tokens)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        check_model(request.model)
        check_supported(request)
        for i, message in enumerate(request.messages):
            check_unicode(f"messages[{i}].role", message.role)
            check_unicode(f"messages[{i}].content", message.content)
        check_stop(request.stop)
        max_tokens = request.max_tokens
        if request.max_completion_tokens is not None:
            if "max_tokens" in request.model_fields_set and max_tokens != (
                request.max_completion_tokens
            ):
                raise HTTPException(
                    400,
                    f"max_tokens ({max_tokens}) and max_completion_tokens "
                    f"({request.max_completion_tokens}) disagree; give one",
                )
            max_tokens = request.max_completion_tokens
        if request.top_logprobs is not None and not request.logprobs:
            raise HTTPException(400, "top_logprobs needs logprobs: true")
        messages = [m.model_dump() for m in request.messages]
        if getattr(backbone.tokenizer, "chat_template", None):
            text = backbone.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            lead: list[int] = []  # the template writes its own special tokens
        else:  # a base model (Gemma 3 270M): plain text after the BOS it expects
            text = "\n\n".join(m["content"] for m in messages)
            lead = leading_special_ids(backbone.tokenizer)
        ids = lead + list(backbone.tokenizer(str(text), add_special_tokens=False)["input_ids"])
        top = (request.top_logprobs or 0) if request.logprobs else 0
        out = await run(ids, max_tokens, top, request.stop)
        logprobs = None
        if request.logprobs:
            logprobs = {
                "content": [
                    {
                        "token": token_text(token),
                        "logprob": lp,
                        "top_logprobs": [{"token": token_text(t), "logprob": v} for t, v in step],
                    }
                    for token, lp, step in zip(
                        out.tokens, out.logprobs, out.top or [[]] * len(out.tokens), strict=True
                    )
                ]
            }
        choice = {"message": {"role": "assistant", "content": out.text}, "logprobs": logprobs}
        return envelope("chat.completion", choice, len(ids), out, max_tokens)

    return app
