"""Submission refuses what the worker could never do: an unsupported task, a blocked webhook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.test_batches import png, post_files
from tests.api.test_jobs import submit


def test_auto_engine_without_model_refuses_figure_task(
    make_client: Callable[..., TestClient], corpus_dir: Path, broker_queue: Callable[[], list[str]]
) -> None:
    client = make_client(engine="auto", model_path=None)

    response = submit(client, corpus_dir / "phototest.tif", task="figure")

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "unsupported_task"
    assert "OCRQ_MODEL_PATH" in response.json()["detail"]["message"]
    assert broker_queue() == []


def test_auto_engine_with_model_accepts_figure_task(
    make_client: Callable[..., TestClient], corpus_dir: Path, tmp_path: Path
) -> None:
    client = make_client(engine="auto", model_path=tmp_path)

    response = submit(client, corpus_dir / "phototest.tif", task="figure")

    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:9/hook", "url_not_allowed"),
        ("http://169.254.169.254/latest", "url_not_allowed"),
        ("http://10.1.2.3/hook", "url_not_allowed"),
        ("http://localhost/hook", "url_not_allowed"),
        # The route's own shape check runs before the SSRF guard.
        ("ftp://example.com/hook", "invalid_webhook_url"),
        ("http://[::1", "invalid_webhook_url"),
        ("http://example.com:99999/hook", "invalid_webhook_url"),
    ],
)
def test_job_webhook_url_is_checked_at_submission(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    broker_queue: Callable[[], list[str]],
    url: str,
    code: str,
) -> None:
    response = submit(make_client(), corpus_dir / "phototest.tif", webhook_url=url)

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == code
    assert broker_queue() == []


def test_job_webhook_url_on_allowlist_is_accepted(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client(url_allowlist="127.0.0.1")

    response = submit(client, corpus_dir / "phototest.tif", webhook_url="http://127.0.0.1:9/hook")

    assert response.status_code == 202, response.text


def test_batch_webhook_url_is_checked_at_submission(
    make_client: Callable[..., TestClient], make_page_image: Callable[..., Image.Image]
) -> None:
    response = post_files(
        make_client(), [png(make_page_image)], webhook_url="http://169.254.169.254/hook"
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "url_not_allowed"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"url": "http://example.com/doc.png", "webhook_url": "http://[::1"}),
        (
            "/v1/batches",
            {
                "sources": [{"url": "http://example.com/doc.png"}],
                "options": {"webhook_url": "http://[::1"},
            },
        ),
    ],
)
def test_json_malformed_webhook_url_is_422(
    make_client: Callable[..., TestClient], path: str, body: dict[str, object]
) -> None:
    response = make_client().post(path, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "invalid_webhook_url"


def test_batch_form_malformed_webhook_url_is_422(
    make_client: Callable[..., TestClient], make_page_image: Callable[..., Image.Image]
) -> None:
    response = post_files(make_client(), [png(make_page_image)], webhook_url="http://[::1")

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "invalid_webhook_url"


DEEP_JSON = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", '{"url": "http://example.com/a.png", "metadata": ' + DEEP_JSON + "}"),
        (
            "/v1/jobs",
            '{"url": "http://example.com/a.png", "metadata": ' + "[" * 40 + "]" * 40 + "}",
        ),
        ("/v1/batches", '{"sources": ' + DEEP_JSON + "}"),
        ("/v1/webhooks/endpoints", '{"url": ' + DEEP_JSON + "}"),
        ("/v1/webhooks/endpoints", '{"url": '),
        ("/v1/jobs", '{"url": '),
    ],
)
def test_malformed_or_deep_json_is_invalid_json(
    make_client: Callable[..., TestClient], path: str, body: str
) -> None:
    response = make_client().post(path, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "invalid_json"
    assert "JSON" in response.json()["detail"]["message"]


def test_form_metadata_nested_too_deep_is_422(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    response = submit(make_client(), corpus_dir / "phototest.tif", metadata=DEEP_JSON)

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "invalid_metadata"
    assert "nested" in response.json()["detail"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "listed"),
    [
        ("/v1/jobs", {"url": "http://example.com/a.png", "bogus": 1}, "url, s3, mode, task"),
        (
            "/v1/batches",
            {"sources": [{"url": "http://example.com/a.png"}], "options": {"bogus": 1}},
            "mode, task",
        ),
    ],
)
def test_json_unknown_field_is_named_with_the_valid_ones(
    make_client: Callable[..., TestClient], path: str, body: dict[str, object], listed: str
) -> None:
    response = make_client().post(path, json=body)

    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["code"] == "unknown_field"
    assert "'bogus'" in detail["message"]
    assert listed in detail["message"]


@pytest.mark.parametrize("kind", ["jobs", "batches"])
def test_not_found_messages_quote_the_id(make_client: Callable[..., TestClient], kind: str) -> None:
    unknown_id = "00000000-0000-4000-8000-000000000000"

    response = make_client().get(f"/v1/{kind}/{unknown_id}")

    assert response.status_code == 404, response.text
    assert f"'{unknown_id}'" in response.json()["detail"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://a..b/doc.png"},
        {"url": "http://example.com/a.png", "webhook_url": "http://a..b/h"},
    ],
)
def test_host_name_idna_cannot_encode_is_invalid_url(
    make_client: Callable[..., TestClient], body: dict[str, str]
) -> None:
    response = make_client().post("/v1/jobs", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["detail"]["code"] == "invalid_url"
