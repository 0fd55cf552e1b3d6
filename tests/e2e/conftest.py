"""End-to-end harness: `ocrq api` and `ocrq worker` as real processes on PostgreSQL, Redis and a
moto S3 server, all on loopback.

Each process runs in its own process group, so a test can SIGKILL a worker together with its
children, as a crashed machine would lose them.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from client import OcrqClient
from core.db import Database, upgrade_database
from core.tenants import create_api_key
from tests.conftest import REDIS_HOST, REDIS_PORT, S3_BUCKET, PostgresServer, free_port

OCRQ = str(Path(sys.executable).with_name("ocrq"))
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# The e2e worker runs under the solo pool, which ignores Celery's time limits. So this limit
# only sets how fast a crashed attempt is taken over. The lease and the workers' sweeper count
# a running job as abandoned once its heartbeat is this old. The broker re-delivers an
# unacknowledged message after three times this (core.celery_app.VISIBILITY_TIMEOUT_FACTOR).
# It is far above one page's time, so no healthy attempt is taken over.
E2E_TASK_TIME_LIMIT_S = 120


@dataclass
class ServiceProcess:
    """A started ocrq command, its process group and its combined output file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group and wait for the leader to exit."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the group politely (SIGTERM), then by force."""
        if self.process.poll() is None:
            self.kill_group(signal.SIGTERM)
        else:
            # The leader exited; its children may not have.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def output_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class Stack:
    """The environment shared by the api and worker processes, and the processes started."""

    env: dict[str, str]
    work_dir: Path
    database_url: str
    storage_url: str
    s3_endpoint_url: str
    processes: list[ServiceProcess] = field(default_factory=list)
    api_url: str = ""
    # A key of the tenant "e2e", sent by client().
    api_key: str | None = None

    def start(self, name: str, *args: str) -> ServiceProcess:
        log_path = self.work_dir / f"{name}-{len(self.processes)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [OCRQ, *args],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        service = ServiceProcess(name, process, log_path)
        self.processes.append(service)
        return service

    def start_api(self) -> ServiceProcess:
        port = free_port()
        service = self.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                pytest.fail(f"ocrq api exited at start:\n{service.output_tail()}")
            try:
                if httpx.get(f"{self.api_url}/readyz", timeout=1).status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        message = f"ocrq api was not ready within {STARTUP_TIMEOUT_S} s:\n{service.output_tail()}"
        pytest.fail(message)

    def client(self) -> OcrqClient:
        """Return a client of the started API that authenticates with api_key."""
        return OcrqClient(self.api_url, api_key=self.api_key)

    def start_worker(self) -> ServiceProcess:
        return self.start("worker", "worker", "--pool", "solo")

    def stop_all(self) -> None:
        for service in self.processes:
            service.stop()


@pytest.fixture
def e2e_redis_url(redis_url: str) -> Iterator[str]:
    """A Redis database number apart from the session's `redis_url`, flushed before and after."""
    import redis

    taken = int(redis_url.rsplit("/", 1)[1])
    db = random.choice([number for number in range(1, 16) if number != taken])
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=3)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client.flushdb()
    client.close()


@pytest.fixture
def stack(
    postgres_server: PostgresServer,
    e2e_redis_url: str,
    s3_endpoint_url: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    """A fresh database, Redis database and S3 prefix; processes started on it stop at the end."""
    database_url = postgres_server.create_database()
    upgrade_database(database_url)
    database = Database(database_url)
    api_key = create_api_key(database, "e2e").plaintext
    database.dispose()
    storage_url = f"s3://{S3_BUCKET}/e2e-{uuid.uuid4().hex[:12]}"

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OCRQ_") and not key.startswith("AWS_")
    }
    env.update(
        {
            "OCRQ_DATABASE_URL": database_url,
            "OCRQ_BROKER_URL": e2e_redis_url,
            "OCRQ_STORAGE_URL": storage_url,
            "OCRQ_S3_ENDPOINT_URL": s3_endpoint_url,
            "OCRQ_ENGINE": "rapidocr",
            "OCRQ_DATA_DIR": str(tmp_path / "data"),
            "OCRQ_TASK_TIME_LIMIT_S": str(E2E_TASK_TIME_LIMIT_S),
            "OCRQ_LOG_LEVEL": "INFO",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    stack = Stack(env, tmp_path, database_url, storage_url, s3_endpoint_url, api_key=api_key)
    yield stack
    stack.stop_all()


@pytest.fixture
def run_locally(tmp_path: Path) -> Callable[[list[Path]], list[str]]:
    """Return a function giving each file's markdown from `ocrq run` (embedded, rapidocr)."""

    def run(paths: list[Path]) -> list[str]:
        import json

        env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
        env["OCRQ_DATA_DIR"] = str(tmp_path / "run-data")
        completed = subprocess.run(
            [OCRQ, "run", "--engine", "rapidocr", "--format", "json", *map(str, paths)],
            env=env,
            capture_output=True,
            check=False,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-4000:]
        documents = json.loads(completed.stdout)
        if isinstance(documents, dict):
            documents = [documents]
        return [document["markdown"] for document in documents]

    return run
