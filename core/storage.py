"""Object storage for inputs and results: a local folder (file://) or an S3 bucket (s3://).

Keys are relative, slash-separated paths; the helpers below build every key the service uses:
`inputs/{job_id}/original`, `results/{job_id}/result.json`, `results/{job_id}/result.md` and
`results/{job_id}/figures/{page}_{k}.jpg`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlparse

from core.errors import ConfigError, NotFoundError, TransientError
from core.settings import Settings

PRESIGNED_URL_TTL_S = 3600
_S3_DELETE_BATCH = 1000  # DeleteObjects accepts at most 1000 keys per request
# Attempts of one S3 request, the first included (botocore's retry budget).
S3_MAX_ATTEMPTS = 2


def input_key(job_id: str) -> str:
    return f"inputs/{job_id}/original"


def result_json_key(job_id: str) -> str:
    return f"results/{job_id}/result.json"


def result_markdown_key(job_id: str) -> str:
    return f"results/{job_id}/result.md"


def figure_key(job_id: str, name: str) -> str:
    """Return the key of a figure crop; `name` is the engine's `{page}_{k}.jpg`."""
    return f"results/{job_id}/figures/{name}"


def job_prefixes(job_id: str) -> tuple[str, str]:
    """Return the key prefixes under which everything of one job is stored."""
    return f"inputs/{job_id}/", f"results/{job_id}/"


class Storage(Protocol):
    """Blob storage addressed by relative keys; every backend honours the same contract."""

    url: str

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store `data` under `key`, replacing any object there; readers never see a partial one."""
        ...

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Store the file at `path` under `key` without reading it into memory."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Return the object's content; raise NotFoundError when there is none."""
        ...

    def download_to(self, key: str, path: Path) -> None:
        """Write the object to `path`; raise NotFoundError when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix`; return how many were deleted."""
        ...

    def presigned_url(self, key: str, expires_s: int = PRESIGNED_URL_TTL_S) -> str | None:
        """Return a time-limited download URL, or None where the backend has no such thing."""
        ...

    def ping(self) -> None:
        """Check that the storage is reachable; raise TransientError when it is not."""
        ...


def open_storage(settings: Settings) -> Storage:
    """Return the storage named by OCRQ_STORAGE_URL (default: a folder under OCRQ_DATA_DIR)."""
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.netloc + parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            message = f"OCRQ_STORAGE_URL must name a bucket (s3://bucket/prefix), got {url!r}"
            raise ConfigError(message)
        return S3Storage(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
        )
    message = f"OCRQ_STORAGE_URL must start with file:// or s3://, got {url!r}"
    raise ConfigError(message)


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative key; raise ValueError for absolute or `..` keys."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or "\\" in key:
        message = f"invalid storage key {key!r}: expected a relative path without '..'"
        raise ValueError(message)
    return key


class LocalStorage:
    """Objects as files under one folder; writes go to a temporary file, then an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with _atomic_writer(self._path(key)) as handle:
            handle.write(data)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        with _atomic_writer(self._path(key)) as handle, path.open("rb") as source:
            shutil.copyfileobj(source, handle)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no stored object at key {key!r}") from exc

    def download_to(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFoundError(f"no stored object at key {key!r}")
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        # Only the folder holding the prefix's last complete segment can contain matches.
        folder = self.root / check_key(prefix).rpartition("/")[0]
        if not folder.is_dir():
            return 0

        deleted = 0
        # Deepest paths first, so each folder is empty by the time it is checked.
        for path in [*sorted(folder.rglob("*"), reverse=True), folder]:
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix):
                path.unlink()
                deleted += 1
            elif path.is_dir() and f"{key}/".startswith(prefix) and not any(path.iterdir()):
                path.rmdir()
        return deleted

    def presigned_url(self, key: str, expires_s: int = PRESIGNED_URL_TTL_S) -> str | None:
        return None

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            message = f"the storage folder {self.root} cannot be created: {exc.strerror}"
            raise TransientError(message) from exc
        if not os.access(self.root, os.W_OK):
            raise TransientError(f"the storage folder {self.root} is not writable")


@contextmanager
def _atomic_writer(target: Path) -> Iterator[BinaryIO]:
    """Yield a binary file written beside `target` and renamed over it when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
        os.replace(temp_path, target)
    finally:
        temp_path.unlink(missing_ok=True)


class S3Storage:
    """Objects in an S3 bucket under an optional key prefix (AWS or any S3-compatible server)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "",
        *,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        # An unresponsive server costs at most S3_MAX_ATTEMPTS times the timeouts.
        config = Config(
            retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        )
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region or None, config=config
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with _s3_errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else {}
        with _s3_errors(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=extra)

    def get_bytes(self, key: str) -> bytes:
        with _s3_errors(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data: bytes = response["Body"].read()
            return data

    def download_to(self, key: str, path: Path) -> None:
        with _s3_errors(key):
            self.client.download_file(self.bucket, self._key(key), str(path))

    def exists(self, key: str) -> bool:
        try:
            with _s3_errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFoundError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        full_prefix = self._key(prefix)
        deleted = 0
        with _s3_errors(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                for start in range(0, len(keys), _S3_DELETE_BATCH):
                    batch = keys[start : start + _S3_DELETE_BATCH]
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                    deleted += len(batch)
        return deleted

    def presigned_url(self, key: str, expires_s: int = PRESIGNED_URL_TTL_S) -> str | None:
        with _s3_errors(key):
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_s,
            )
            return url

    def ping(self) -> None:
        try:
            with _s3_errors(""):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFoundError as exc:
            raise TransientError(f"the S3 bucket {self.bucket!r} does not exist") from exc


@contextmanager
def _s3_errors(key: str) -> Iterator[None]:
    """Translate botocore failures: a missing key to NotFoundError, the rest to TransientError."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            raise NotFoundError(f"no stored object at key {key!r}") from exc
        message = f"S3 request for key {key!r} failed with {code or 'an error'}"
        raise TransientError(message) from exc
    except BotoCoreError as exc:
        message = f"S3 request for key {key!r} failed: {type(exc).__name__}"
        raise TransientError(message) from exc
