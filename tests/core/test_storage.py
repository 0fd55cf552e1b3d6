"""core.storage: one contract, run against the local folder and an S3 server (moto)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import ConfigError, NotFoundError, TransientError
from core.settings import Settings
from core.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    check_key,
    figure_key,
    input_key,
    open_storage,
    result_json_key,
    result_markdown_key,
)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Storage:
    """A fresh, empty storage of each backend, built through open_storage."""
    if request.param == "local":
        return open_storage(make_settings())
    endpoint_url = request.getfixturevalue("s3_endpoint_url")
    storage_url = request.getfixturevalue("s3_storage_url")
    return open_storage(make_settings(storage_url=storage_url, s3_endpoint_url=endpoint_url))


def test_put_bytes_then_get_bytes_round_trips(storage: Storage) -> None:
    storage.put_bytes("inputs/j1/original", b"%PDF-1.7 data")

    assert storage.get_bytes("inputs/j1/original") == b"%PDF-1.7 data"


def test_put_bytes_replaces_existing_object(storage: Storage) -> None:
    storage.put_bytes("results/j1/result.md", b"old")

    storage.put_bytes("results/j1/result.md", b"new")

    assert storage.get_bytes("results/j1/result.md") == b"new"


def test_put_file_then_download_to(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(bytes(range(256)) * 100)
    target = tmp_path / "downloaded.bin"

    storage.put_file("inputs/j2/original", source)
    storage.download_to("inputs/j2/original", target)

    assert target.read_bytes() == source.read_bytes()


def test_get_bytes_of_missing_key_raises_not_found(storage: Storage) -> None:
    with pytest.raises(NotFoundError):
        storage.get_bytes("inputs/missing/original")


def test_download_of_missing_key_raises_not_found(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        storage.download_to("inputs/missing/original", tmp_path / "out")


def test_exists_reports_stored_keys_only(storage: Storage) -> None:
    storage.put_bytes("results/j3/result.json", b"{}")

    assert storage.exists("results/j3/result.json")
    assert not storage.exists("results/j3/result.md")


def test_delete_prefix_removes_only_that_job(storage: Storage) -> None:
    storage.put_bytes("results/job/result.json", b"{}")
    storage.put_bytes("results/job/figures/0_0.jpg", b"jpg")
    storage.put_bytes("results/job-other/result.json", b"{}")

    deleted = storage.delete_prefix("results/job/")

    assert deleted == 2
    assert not storage.exists("results/job/result.json")
    assert not storage.exists("results/job/figures/0_0.jpg")
    assert storage.exists("results/job-other/result.json")


def test_local_delete_prefix_removes_emptied_folders(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("results/job/figures/0_0.jpg", b"jpg")
    storage.put_bytes("results/job-other/result.json", b"{}")

    storage.delete_prefix("results/job/")

    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == ["job-other"]


def test_delete_prefix_of_nothing_returns_zero(storage: Storage) -> None:
    assert storage.delete_prefix("results/none/") == 0


def test_ping_succeeds_on_reachable_storage(storage: Storage) -> None:
    storage.ping()


@pytest.mark.parametrize("key", ["/etc/passwd", "../escape", "inputs/../../x", "", "a\\b"])
def test_check_key_rejects_unsafe_keys(key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        check_key(key)


def test_keys_follow_the_documented_layout() -> None:
    assert input_key("J") == "inputs/J/original"
    assert result_json_key("J") == "results/J/result.json"
    assert result_markdown_key("J") == "results/J/result.md"
    assert figure_key("J", "2_0.jpg") == "results/J/figures/2_0.jpg"


def test_local_presigned_url_is_none(tmp_path: Path) -> None:
    assert LocalStorage(tmp_path).presigned_url("inputs/j/original") is None


def test_local_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)

    storage.put_bytes("results/j/result.md", b"text")

    assert [path.name for path in (tmp_path / "results" / "j").iterdir()] == ["result.md"]


def test_local_failed_write_keeps_previous_object(tmp_path: Path) -> None:
    """A write that fails halfway leaves the old object whole (atomic rename)."""
    storage = LocalStorage(tmp_path)
    storage.put_bytes("results/j/result.md", b"old")

    with pytest.raises(FileNotFoundError):
        storage.put_file("results/j/result.md", tmp_path / "does-not-exist")

    assert storage.get_bytes("results/j/result.md") == b"old"
    assert len(list((tmp_path / "results" / "j").iterdir())) == 1


def test_s3_presigned_url_names_bucket_and_key(
    s3_endpoint_url: str, s3_storage_url: str, make_settings: Callable[..., Settings]
) -> None:
    storage = open_storage(
        make_settings(storage_url=s3_storage_url, s3_endpoint_url=s3_endpoint_url)
    )

    url = storage.presigned_url("results/j/result.md", expires_s=60)

    assert url is not None
    assert "ocrq-test" in url
    assert "results/j/result.md" in url
    assert "Expires=" in url or "X-Amz-Expires=60" in url


def test_s3_ping_of_missing_bucket_raises_transient(s3_endpoint_url: str) -> None:
    storage = S3Storage("no-such-bucket", endpoint_url=s3_endpoint_url, region="us-east-1")

    with pytest.raises(TransientError):
        storage.ping()


def test_open_storage_rejects_s3_url_without_bucket(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="bucket"):
        open_storage(make_settings(storage_url="s3://"))
