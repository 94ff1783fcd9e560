"""`frozenlm serve`'s app: one frozen backbone, many tasks' plug-ins, OpenAI-compatible routes.

`/v1/models`, `/v1/completions` and `/v1/chat/completions` (with `stream`, `n`,
`temperature`, `logprobs`, `stop`) where `model` names the backbone (raw text) or a plug-in
(the task's input, rendered as `frozenlm eval` renders it); `/v1/classify` for classification
plug-ins (each label's probability by rank classification); `/health`, `/metrics`; and, with
an admin token, `/admin/plugins` to list, load (from under the plug-in root) and unload
plug-ins at run time. Every request goes through the micro-batcher (`batcher.py`), so rows of
different tasks share forwards.

Safe by default: an API key, when set, guards every route (the docs and the schema too);
bodies over the cap get 413; unknown models 404; bad fields 422 or 400 with the reason; a full
queue 429 with Retry-After; a request still waiting after `request_timeout` 504; errors are
OpenAI-shaped `{"error": {"message", "type", "code"}}` and never carry a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from frozenlm.backbone import Backbone
from frozenlm.engine.continuous import Step
from frozenlm.engine.generation import GenerationConfig
from frozenlm.prompts.render import RenderedPrompt, leading_special_ids
from frozenlm.serve.batcher import Batcher, BatcherConfig, ClassifyJob, GenerateJob
from frozenlm.serve.finetune import FineTuning
from frozenlm.serve.guard import Guard, error_response
from frozenlm.serve.metrics import Metrics
from frozenlm.serve.models import ModelTable, Prompted, ServedModel, ServeError
from frozenlm.serve.schemas import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    FineTuneRequest,
    LoadRequest,
    chat_max_tokens,
    check_supported,
    check_unicode,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """How the server guards and paces its routes (each also a `frozenlm serve` option and an
    environment variable)."""

    api_key: str | None = None
    """When set, every route needs `Authorization: Bearer <api_key>`."""
    admin_token: str | None = None
    """When set, `/admin/plugins` (and, with a plug-in root, `/v1/files` and
    `/v1/fine_tuning/jobs`) are on and need `X-Admin-Token: <admin_token>` or
    `Authorization: Bearer <admin_token>` (what the openai client sends as its key)."""
    max_body_bytes: int = 1_000_000
    """Larger request bodies get 413."""
    request_timeout: float = 300.0
    """Seconds a request may wait for its answer (then 504)."""
    retry_after: int = 1
    """Seconds a 429 asks the client to wait."""
    batcher: BatcherConfig = field(default_factory=BatcherConfig)


class _Visible:
    """What of a choice's text may be sent yet while streaming: the final text is stripped and
    cut before any stop string, so leading and trailing spaces, the start of a possible stop
    string and a half-decoded character wait until the next tokens say what they are."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.sent = ""

    def delta(self, text: str, final: bool) -> str:
        hold = 0
        if not final:
            for stop in self.stop:
                hold = max([hold] + [k for k in range(1, len(stop)) if text.endswith(stop[:k])])
        shown = text[: len(text) - hold].lstrip()
        shown = shown.strip() if final else shown.rstrip().rstrip("\ufffd")
        if not shown.startswith(self.sent) or len(shown) <= len(self.sent):
            return ""
        new, self.sent = shown[len(self.sent) :], shown
        return new


def create_app(
    backbone: Backbone,
    model_name: str | None = None,
    *,
    plugins: Sequence[str | Path] = (),
    plugin_root: str | Path | None = None,
    max_loaded: int = 16,
    config: ServeConfig = ServeConfig(),
    backbone_ref: str | None = None,
) -> FastAPI:
    """The server over `backbone` (served as `model_name`, default its name) and `plugins`
    (folders, each served by its folder name; NAME=DIR names it). `backbone_ref` is how a
    fine-tuning worker process loads the same backbone (default: `backbone.source`)."""
    table = ModelTable(backbone, backbone_name=model_name, root=plugin_root, max_loaded=max_loaded)
    for entry in plugins:
        name, _, folder = str(entry).rpartition("=") if "=" in str(entry) else ("", "", entry)
        table.add(folder, name or None)
    metrics = Metrics(lambda: sum(1 for m in table.models() if m.plugin is not None))
    batcher = Batcher(backbone, table, config.batcher, metrics)
    tuning = None
    if config.admin_token and plugin_root is not None:
        dtype = str(backbone.dtype).removeprefix("torch.")
        ref = backbone_ref or backbone.source
        tuning = FineTuning(table, ref, str(backbone.device), dtype)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)
        if tuning is not None:
            await asyncio.to_thread(tuning.stop)

    app = FastAPI(title="frozenlm serve", lifespan=lifespan)
    app.state.table, app.state.batcher, app.state.metrics = table, batcher, metrics

    @app.exception_handler(ServeError)
    async def refused(_: Request, err: ServeError) -> JSONResponse:
        headers = {"Retry-After": str(config.retry_after)} if err.status in (429, 503) else None
        return error_response(err.status, str(err), headers)

    @app.exception_handler(StarletteHTTPException)
    async def httperror_response(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in err.errors()[:5]
        ]
        return error_response(422, "; ".join(problems) or "the request is malformed")

    @app.exception_handler(Exception)
    async def crashed(_: Request, err: Exception) -> JSONResponse:
        log.error("request failed: %r", err, exc_info=err)
        return error_response(500, "internal error (the server's log has the details)")

    def model_for(request: Request, name: str) -> ServedModel:
        request.state.model = name
        return table.get(name)

    async def wait(job: ClassifyJob) -> Any:
        batcher.start()
        batcher.submit(job)
        assert job.future is not None
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), config.request_timeout)
        except TimeoutError:
            job.cancelled = True
            raise ServeError(504, f"no answer within {config.request_timeout:g} s") from None
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    def backbone_prompt(ids: list[int], text: str, max_tokens: int) -> RenderedPrompt:
        if not ids:
            raise ServeError(400, "prompt is empty: it has 0 tokens, give some text")
        room = backbone.max_length - max_tokens
        if len(ids) > room:
            raise ServeError(
                400,
                f"the prompt has {len(ids)} tokens; at most {room} fit with max_tokens "
                f"{max_tokens} in the model's {backbone.max_length}-token context",
            )
        return RenderedPrompt(ids, text, 0, 0, False)

    def prompted(model: ServedModel, text: str, max_tokens: int) -> Prompted:
        """A completion's row: raw text for the backbone, the task's input for a plug-in."""
        if model.task is None:
            ids = list(backbone.tokenizer(text)["input_ids"])
            return Prompted(model, backbone_prompt(ids, text, max_tokens))
        example = model.example(text)
        return Prompted(model, model.render(example, max_tokens), example)

    def generation_configs(
        request: Any, model: ServedModel, max_tokens: int
    ) -> list[GenerationConfig]:
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        if request.stop is None and model.task is not None:
            stop = ("\n",)  # the task's answer ends at the line's end, as evaluation stops
        top = request.top_logprobs if isinstance(request, ChatRequest) else request.logprobs
        top = (top or 0) if not isinstance(request, ChatRequest) or request.logprobs else 0
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        return [
            GenerationConfig(
                max_new_tokens=max_tokens,
                stop=stop,
                top_logprobs=top,
                temperature=request.temperature,
                seed=seed + i,
            )
            for i in range(request.n)
        ]

    def token_text(token: int) -> str:
        return str(backbone.tokenizer.decode([token]))

    async def generate(
        body: CompletionRequest | ChatRequest,
        row: Prompted,
        max_tokens: int,
        chat: bool,
    ) -> Any:
        configs = generation_configs(body, row.model, max_tokens)
        job = GenerateJob([row] * body.n, asyncio.get_running_loop(), configs=configs)
        batcher.start()
        batcher.submit(job)
        prompt_tokens = len(row.prompt.ids)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        want_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
        deadline = time.monotonic() + config.request_timeout

        async def events() -> AsyncIterator[tuple[int, Step]]:
            try:
                while True:
                    left = deadline - time.monotonic()
                    try:
                        item = await asyncio.wait_for(job.events.get(), max(left, 0.001))
                    except TimeoutError:
                        raise ServeError(
                            504, f"no answer within {config.request_timeout:g} s"
                        ) from None
                    if item is None:
                        return
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                job.cancelled = job.cancelled or bool(job.open_choices)

        def logprob_entry(step: Step) -> Any:
            if not want_logprobs or step.token is None:
                return None
            if chat:
                top = [{"token": token_text(t), "logprob": v} for t, v in step.top]
                return {
                    "token": token_text(step.token),
                    "logprob": step.logprob,
                    "top_logprobs": top,
                }
            return step

        def usage(completion: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_tokens * body.n,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens * body.n + completion,
            }

        if not body.stream:
            steps: list[list[Step]] = [[] for _ in range(body.n)]
            try:
                async for choice, step in events():
                    steps[choice].append(step)
            except BaseException:  # the client left, or the wait timed out
                job.cancelled = True
                raise
            choices = []
            for index, made in enumerate(steps):
                text = made[-1].text.strip() if made else ""
                entries = [logprob_entry(s) for s in made if s.token is not None]
                content: dict[str, Any]
                if chat:
                    logprobs = {"content": entries} if want_logprobs else None
                    content = {"message": {"role": "assistant", "content": text}}
                else:
                    logprobs = _completion_logprobs(entries, token_text) if want_logprobs else None
                    content = {"text": text}
                finish = made[-1].finished if made else "stop"
                choices.append(
                    {"index": index, **content, "logprobs": logprobs, "finish_reason": finish}
                )
            completion = sum(1 for made in steps for s in made if s.token is not None)
            return {
                "id": ident,
                "object": kind,
                "created": created,
                "model": row.model.name,
                "choices": choices,
                "usage": usage(completion),
            }

        visible = [_Visible(configs[0].stop) for _ in range(body.n)]
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
            data = {"id": ident, "object": chunk_kind, "created": created}
            data |= {"model": row.model.name, "choices": choices, **(extra or {})}
            return f"data: {json.dumps(data)}\n\n"

        async def stream() -> AsyncIterator[str]:
            completion = 0
            try:
                if chat:
                    for index in range(body.n):
                        delta = {"role": "assistant", "content": ""}
                        yield chunk(
                            [
                                {
                                    "index": index,
                                    "delta": delta,
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                async for choice, step in events():
                    completion += step.token is not None
                    text = visible[choice].delta(step.text, step.finished is not None)
                    entry = logprob_entry(step)
                    if not text and entry is None and step.finished is None:
                        continue
                    if chat:
                        piece: dict[str, Any] = {"delta": {"content": text} if text else {}}
                        piece["logprobs"] = {"content": [entry]} if entry else None
                    else:
                        piece = {"text": text}
                        piece["logprobs"] = (
                            _completion_logprobs([entry], token_text) if entry else None
                        )
                    yield chunk([{"index": choice, **piece, "finish_reason": step.finished}])
                if include_usage:
                    yield chunk([], {"usage": usage(completion)})
                yield "data: [DONE]\n\n"
            except ServeError as err:
                error = {"error": {"message": str(err), "type": "server_error", "code": err.status}}
                yield f"data: {json.dumps(error)}\n\n"
            finally:  # a client that went away stops its rows at the next step
                job.cancelled = job.cancelled or bool(job.open_choices)

        return StreamingResponse(stream(), media_type="text/event-stream")

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(table.models()), "queue": batcher.depth}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [m.describe() for m in table.models()]}

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        model = model_for(request, body.model)
        check_supported(body)
        check_unicode("prompt", body.prompt)
        if not body.prompt:
            raise ServeError(400, "prompt is empty: give some text to continue")
        row = prompted(model, body.prompt, body.max_tokens)
        return await generate(body, row, body.max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatRequest) -> Any:
        model = model_for(request, body.model)
        check_supported(body)
        for i, message in enumerate(body.messages):
            check_unicode(f"messages[{i}].role", message.role)
            check_unicode(f"messages[{i}].content", message.content)
        max_tokens = chat_max_tokens(body)
        if body.top_logprobs is not None and not body.logprobs:
            raise ServeError(400, "top_logprobs needs logprobs: true")
        if model.task is not None:
            if len(body.messages) != 1 or body.messages[0].role != "user":
                raise ServeError(
                    400,
                    f"model '{model.name}' answers one task input: send one user message "
                    "(its prompt format comes from training)",
                )
            row = prompted(model, body.messages[0].content, max_tokens)
        else:
            row = Prompted(model, backbone_prompt(_chat_ids(backbone, body), "", max_tokens))
        return await generate(body, row, max_tokens, chat=True)

    @app.post("/v1/classify")
    async def classify(request: Request, body: ClassifyRequest) -> dict[str, Any]:
        model = model_for(request, body.model)
        inputs = body.input if isinstance(body.input, list) else [body.input]
        if not 1 <= len(inputs) <= 256:
            raise ServeError(400, f"send 1 to 256 inputs, not {len(inputs)}")
        model.candidates()  # 400 unless a classification plug-in
        rows = []
        for i, fields in enumerate(inputs):
            texts = [fields] if isinstance(fields, str) else list(fields.values())
            for text in texts:
                check_unicode(f"input[{i}]", text)
            example = model.example(fields)
            rows.append(Prompted(model, model.render(example, None), example))
        scores = await wait(ClassifyJob(rows, asyncio.get_running_loop()))
        assert model.task is not None
        labels = list(model.task.labels)
        data = []
        for i, score in enumerate(scores):
            values = score.values(False)
            probs = values.softmax(dim=0).tolist()
            data.append(
                {
                    "index": i,
                    "label": labels[int(values.argmax())],
                    "probabilities": dict(zip(labels, probs, strict=True)),
                    "logprobs": dict(zip(labels, values.tolist(), strict=True)),
                }
            )
        used = sum(len(r.prompt.ids) for r in rows)
        return {
            "object": "list",
            "model": model.name,
            "data": data,
            "usage": {"prompt_tokens": used},
        }

    if config.admin_token:
        token = config.admin_token.encode()

        def admitted(x_admin_token: str | None, bearer: str | None = None) -> None:
            given = (x_admin_token or "").encode()
            if not secrets.compare_digest(given, token) and not (
                bearer is not None and secrets.compare_digest(bearer.encode(), token)
            ):
                raise ServeError(401, "a valid admin token is needed: X-Admin-Token")

        def admin(x_admin_token: Annotated[str | None, Header()] = None) -> None:
            """The admin routes' guard: the token in X-Admin-Token."""
            admitted(x_admin_token)

        @app.get("/admin/plugins", dependencies=[Depends(admin)])
        async def listed() -> dict[str, Any]:
            data = [m.describe() | {"loaded": m.plugin is not None} for m in table.models()]
            return {"object": "list", "data": [d for d in data if d["kind"] != "backbone"]}

        @app.post("/admin/plugins", dependencies=[Depends(admin)])
        async def load(body: LoadRequest) -> Any:
            made = await asyncio.to_thread(table.load, body.path, body.name)
            return {"object": "list", "data": [m.describe() for m in made]}

        @app.delete("/admin/plugins/{name}", dependencies=[Depends(admin)])
        async def unload(name: str) -> Any:
            return {"unloaded": table.unload(name)}

    if config.admin_token and tuning is not None:
        ft = tuning

        def tuner(
            x_admin_token: Annotated[str | None, Header()] = None,
            authorization: Annotated[str | None, Header()] = None,
        ) -> FineTuning:
            """The fine-tuning routes' guard (the token in X-Admin-Token or as the Bearer key
            the openai client sends), giving the jobs."""
            admitted(x_admin_token, (authorization or "").removeprefix("Bearer "))
            return ft

        jobs_dependency = Depends(tuner)

        @app.post("/v1/files")
        async def upload(
            file: Annotated[UploadFile, File()],
            purpose: Annotated[str, Form()],
            jobs: FineTuning = jobs_dependency,
        ) -> Any:
            data = await file.read()
            return await asyncio.to_thread(
                jobs.add_file, data, file.filename or "upload.jsonl", purpose
            )

        @app.get("/v1/files")
        async def files(jobs: FineTuning = jobs_dependency) -> Any:
            return {"object": "list", "data": jobs.list_files(), "has_more": False}

        @app.get("/v1/files/{file_id}")
        async def file_info(file_id: str, jobs: FineTuning = jobs_dependency) -> Any:
            return jobs.file(file_id)

        @app.delete("/v1/files/{file_id}")
        async def file_delete(file_id: str, jobs: FineTuning = jobs_dependency) -> Any:
            return jobs.delete_file(file_id)

        @app.post("/v1/fine_tuning/jobs")
        async def job_create(body: FineTuneRequest, jobs: FineTuning = jobs_dependency) -> Any:
            return await asyncio.to_thread(jobs.create, body.model_dump(exclude_none=True))

        @app.get("/v1/fine_tuning/jobs")
        async def jobs_list(jobs: FineTuning = jobs_dependency) -> Any:
            return {"object": "list", "data": jobs.list_jobs(), "has_more": False}

        @app.get("/v1/fine_tuning/jobs/{job_id}")
        async def job(job_id: str, jobs: FineTuning = jobs_dependency) -> Any:
            return jobs.get(job_id)

        @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
        async def job_cancel(job_id: str, jobs: FineTuning = jobs_dependency) -> Any:
            return await asyncio.to_thread(jobs.cancel, job_id)

        @app.get("/v1/fine_tuning/jobs/{job_id}/events")
        async def job_events(job_id: str, jobs: FineTuning = jobs_dependency) -> Any:
            return {"object": "list", "data": jobs.events(job_id), "has_more": False}

    app.add_middleware(
        Guard,
        api_key=config.api_key,
        admin_token=config.admin_token,
        max_body_bytes=config.max_body_bytes,
        metrics=metrics,
    )
    return app


def _chat_ids(backbone: Backbone, body: ChatRequest) -> list[int]:
    """The bare backbone's chat prompt: its chat template, or plain text after its BOS."""
    messages = [m.model_dump() for m in body.messages]
    if getattr(backbone.tokenizer, "chat_template", None):
        text = backbone.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        lead: list[int] = []  # the template writes its own special tokens
    else:  # a base model (Gemma 3 270M): plain text after the BOS it expects
        text = "\n\n".join(m["content"] for m in messages)
        lead = leading_special_ids(backbone.tokenizer)
    return lead + list(backbone.tokenizer(str(text), add_special_tokens=False)["input_ids"])


def _completion_logprobs(steps: Sequence[Any], token_text: Callable[[int], str]) -> dict[str, Any]:
    """The completions route's logprobs object for generated steps."""
    return {
        "tokens": [token_text(s.token) for s in steps],
        "token_logprobs": [s.logprob for s in steps],
        "top_logprobs": [{token_text(t): v for t, v in s.top} for s in steps],
    }
