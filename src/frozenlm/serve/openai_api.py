"""OpenAI-compatible routes over the frozen backbone: `/v1/models`, `/v1/completions` and
`/v1/chat/completions`, greedy decoding with token log-probabilities.

This lets any OpenAI client (SuperICL's HTTP backend included) talk to the local model, and lets
tests run that client against a real server. Decoding is always greedy: a `temperature` in the
request is accepted and ignored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from frozenlm.backbone import Backbone
from frozenlm.engine.generation import Generation, GenerationConfig, generate_detailed

MAX_TOP_LOGPROBS = 20


class CompletionRequest(BaseModel):
    model: str
    prompt: str
    max_tokens: int = Field(16, ge=1, le=1024)
    temperature: float = 0.0
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    stop: str | list[str] | None = None


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, le=1024)
    temperature: float = 0.0
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    stop: str | list[str] | None = None


def create_app(backbone: Backbone, model_name: str | None = None) -> FastAPI:
    """A FastAPI app serving `backbone` under `model_name` (default: the backbone's name)."""
    name = model_name or backbone.name
    app = FastAPI(title="frozenlm OpenAI-compatible API")
    lock = asyncio.Lock()  # one forward at a time: the backbone is not re-entrant on 2 cores

    def check_model(requested: str) -> None:
        if requested != name:
            raise HTTPException(404, f"model '{requested}' is not served here; use '{name}'")

    async def run(ids: list[int], max_tokens: int, top: int, stop: Any) -> Generation:
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
        messages = [m.model_dump() for m in request.messages]
        if getattr(backbone.tokenizer, "chat_template", None):
            text = backbone.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            text = "\n\n".join(m["content"] for m in messages)
        ids = list(backbone.tokenizer(str(text), add_special_tokens=False)["input_ids"])
        top = (request.top_logprobs or 0) if request.logprobs else 0
        out = await run(ids, request.max_tokens, top, request.stop)
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
        return envelope("chat.completion", choice, len(ids), out, request.max_tokens)

    return app
