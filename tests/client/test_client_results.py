"""OcrqClient's result file methods: links, one page and one figure (httpx.MockTransport)."""

from __future__ import annotations

import httpx
import pytest

from client import ClientError, OcrqClient

BASE_URL = "http://ocrq.test"
JOB_ID = "6f1c2a5e-0000-4000-8000-000000000001"


def client_answering(response: httpx.Response, seen: list[httpx.Request]) -> OcrqClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response

    return OcrqClient(BASE_URL, api_key="ocrq_key", transport=httpx.MockTransport(handler))


def test_result_links_asks_for_links() -> None:
    seen: list[httpx.Request] = []
    links = {"job_id": JOB_ID, "result_json": "https://s3.test/r", "pages": [], "figures": []}
    client = client_answering(httpx.Response(200, json=links), seen)

    assert client.result_links(JOB_ID) == links
    assert seen[0].url.path == f"/v1/jobs/{JOB_ID}/result"
    assert seen[0].url.params["links"] == "true"


def test_page_reads_one_page_by_index() -> None:
    seen: list[httpx.Request] = []
    client = client_answering(httpx.Response(200, json={"index": 2, "markdown": "x"}), seen)

    assert client.page(JOB_ID, 2)["index"] == 2
    assert seen[0].url.path == f"/v1/jobs/{JOB_ID}/pages/2"


def test_figure_returns_jpeg_bytes() -> None:
    seen: list[httpx.Request] = []
    jpeg = b"\xff\xd8\xff\xe0fake"
    client = client_answering(httpx.Response(200, content=jpeg), seen)

    assert client.figure(JOB_ID, "0_1.jpg") == jpeg
    assert seen[0].url.path == f"/v1/jobs/{JOB_ID}/figures/0_1.jpg"
    assert seen[0].headers["authorization"] == "Bearer ocrq_key"


def test_missing_figure_raises_with_server_code() -> None:
    body = {"detail": {"code": "figure_not_found", "message": "Figure '9_9.jpg' was not found."}}
    client = client_answering(httpx.Response(404, json=body), [])

    with pytest.raises(ClientError) as caught:
        client.figure(JOB_ID, "9_9.jpg")
    assert caught.value.code == "figure_not_found"
