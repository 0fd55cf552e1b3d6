"""Shared test fixtures: local PostgreSQL, Redis and a moto S3 server, plus factories.

Service fixtures skip their tests with a message saying how to start the service. When the
environment sets CI=true a missing service fails the test instead, so CI never passes by skipping.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from core.settings import Settings

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
REDIS_CLAIM_TTL_S = 3600
S3_BUCKET = "ocrq-test"
CORPUS_DIR = Path(
    os.environ.get("OCRQ_CORPUS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "corpus"
)

_START_POSTGRES = "start it with `make services` (pg_ctlcluster ... main start)"
_START_REDIS = "start it with `make services` or `redis-server --daemonize yes --bind 127.0.0.1`"


def service_unavailable(message: str) -> None:
    """Skip the current test because a service is missing, or fail it when CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- PostgreSQL -------------------------------------------------------------------------------


class PostgresServer:
    """The local PostgreSQL server; creates uniquely named databases and drops them at the end."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.created: list[str] = []

    def _admin_connection(self) -> Any:
        import psycopg

        return psycopg.connect(
            host=POSTGRES_HOST,
            port=POSTGRES_PORT,
            user=self.user,
            dbname="postgres",
            autocommit=True,
            connect_timeout=3,
        )

    def create_database(self) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        name = f"ocrq_test_{uuid.uuid4().hex[:12]}"
        with self._admin_connection() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql+psycopg://{self.user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"

    def drop_all(self) -> None:
        with self._admin_connection() as connection:
            for name in self.created:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def _connect_postgres() -> PostgresServer | None:
    import psycopg

    for user in POSTGRES_USERS:
        server = PostgresServer(user)
        try:
            server._admin_connection().close()
        except psycopg.OperationalError:
            continue
        return server
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The local PostgreSQL server on 127.0.0.1:5432 (trust auth, user postgres or root)."""
    server = _connect_postgres()
    if server is None:
        service_unavailable(
            f"PostgreSQL is not reachable on {POSTGRES_HOST}:{POSTGRES_PORT}; {_START_POSTGRES}"
        )
        raise AssertionError("unreachable")
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a fresh, empty database created for this test session."""
    return postgres_server.create_database()


# --- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis database number reserved for this session, flushed before and after.

    Test runs on one machine claim numbers 1-15 through keys in database 0, so two concurrent
    runs never share one (a crashed run's claim expires after REDIS_CLAIM_TTL_S).
    """
    import redis

    registry = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=3)
    try:
        registry.ping()
    except redis.ConnectionError:
        service_unavailable(f"Redis is not reachable on {REDIS_HOST}:{REDIS_PORT}; {_START_REDIS}")
        raise AssertionError("unreachable") from None

    owner = uuid.uuid4().hex
    candidates = random.sample(range(1, 16), 15)
    claim_key = "ocrq-test:db:{}"
    db = next(
        (
            n
            for n in candidates
            if registry.set(claim_key.format(n), owner, nx=True, ex=REDIS_CLAIM_TTL_S)
        ),
        None,
    )
    if db is None:
        pytest.fail("all Redis databases 1-15 are claimed by other test runs")

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=3)
    client.flushdb()
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    client.flushdb()
    client.close()
    if registry.get(claim_key.format(db)) == owner.encode():
        registry.delete(claim_key.format(db))
    registry.close()


# --- S3 (moto) --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_endpoint_url() -> Iterator[str]:
    """URL of a moto S3 server on a free loopback port, with the bucket `ocrq-test` created."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        service_unavailable("moto[server] is not installed; run `pip install -e '.[dev]'`")
        raise AssertionError("unreachable") from None

    # Fake credentials: boto3 refuses to sign without some, and moto accepts any.
    saved = {key: os.environ.get(key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint_url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=S3_BUCKET
    )
    yield endpoint_url

    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_storage_url(s3_endpoint_url: str) -> str:
    """An s3:// storage URL under a prefix of its own in the test bucket."""
    return f"s3://{S3_BUCKET}/test-{uuid.uuid4().hex[:12]}"


# --- Factories --------------------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Factory of Settings on the embedded defaults under tmp_path; keyword arguments override."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "ocrq", "engine": "rapidocr"}
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def make_page_image() -> Callable[..., Image.Image]:
    """Factory of white RGB pages with black lines of text, for engines and rasterizers."""

    def build(
        lines: tuple[str, ...] = ("The quick brown fox", "jumps over the lazy dog"),
        size_px: tuple[int, int] = (640, 240),
        font_size: int = 32,
    ) -> Image.Image:
        image = Image.new("RGB", size_px, "white")
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=font_size)
        for row, line in enumerate(lines):
            draw.text((24, 24 + row * int(font_size * 1.6)), line, fill="black", font=font)
        return image

    return build


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The read-only corpus of real test documents beside the checkout."""
    if not CORPUS_DIR.is_dir():
        service_unavailable(f"the test corpus is not at {CORPUS_DIR}; set OCRQ_CORPUS_DIR")
    return CORPUS_DIR
