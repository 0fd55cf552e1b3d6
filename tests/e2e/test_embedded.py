"""`ocrq api` in embedded mode: no broker, jobs run in a thread of the API process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from client import OcrqClient
from tests.e2e.conftest import OCRQ, Stack


def test_embedded_api_runs_jobs_in_process(tmp_path: Path, corpus_dir: Path) -> None:
    """With no OCRQ_BROKER_URL, SQLite and a local folder, submitted jobs still finish."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env.update({"OCRQ_DATA_DIR": str(tmp_path / "data"), "OCRQ_ENGINE": "rapidocr"})
    created = subprocess.run(
        [OCRQ, "keys", "create", "--tenant", "embedded"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    api_key = created.stdout.strip()
    stack = Stack(env, tmp_path, database_url="", storage_url="", s3_endpoint_url="")
    try:
        stack.start_api()
        with OcrqClient(stack.api_url, api_key=api_key) as client:
            job_ids = [
                client.submit(corpus_dir / name)["id"]
                for name in ("multipage.tiff", "p_trns_single.png")
            ]
            jobs = [client.wait(job_id, 300, progress=False) for job_id in job_ids]
            ready = httpx.get(f"{stack.api_url}/readyz", timeout=5).json()
    finally:
        stack.stop_all()

    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert [job["pages_done"] for job in jobs] == [3, 1]
    assert ready["checks"]["broker"] == "ok"
    assert (tmp_path / "data" / "ocrq.db").is_file()
