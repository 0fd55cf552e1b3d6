"""`ocrq keys create` on a PostgreSQL database that `ocrq migrate` has not set up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_keys import run_keys
from tests.conftest import PostgresServer

pytestmark = pytest.mark.services


def test_keys_create_on_unmigrated_database_says_to_migrate(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    empty = postgres_server.create_database()

    completed = run_keys(empty, tmp_path, "create", "--tenant", "me")

    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert "run `ocrq migrate` first" in completed.stderr
    assert "ProgrammingError" not in completed.stderr
