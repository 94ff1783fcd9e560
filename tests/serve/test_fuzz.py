"""Property-based fuzzing of `frozenlm serve` against its own OpenAPI schema (schemathesis):
whatever a client sends, the answer is never a 5xx and never carries a stack trace."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.serve.app import ServeConfig, create_app
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin

ADMIN = "fuzz-admin"


def _app() -> object:
    tiny = Backbone.load("tiny")
    root = Path(tempfile.mkdtemp(prefix="fuzz-plugins-"))
    config = TrainConfig(steps=1, batch_size=2, eval_every=1, eval_limit=2)
    soft = to_json(SoftPromptConfig(length=2))
    train_plugin(tiny, ["sentiment"], "soft-prompt", soft, config, root / "sent")
    serve = ServeConfig(admin_token=ADMIN, request_timeout=60)
    return create_app(tiny, "tiny", plugins=[root / "sent"], plugin_root=root, config=serve)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gets_a_5xx_or_a_stack_trace(case: schemathesis.Case) -> None:
    if case.path.startswith("/admin"):
        case.headers = {**(case.headers or {}), "x-admin-token": ADMIN}
    response = case.call()
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert "error" in response.json()


def test_the_schema_lists_every_route() -> None:
    paths = set(schema.raw_schema["paths"])
    expected = {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/models"}
    assert expected | {"/health", "/metrics", "/admin/plugins"} <= paths
