"""`ocrq migrate` and `ocrq worker` start-up, run as subprocesses with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

OCRQ = Path(sys.executable).with_name("ocrq")


def run_ocrq(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env["OCRQ_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [str(OCRQ), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_migrate_creates_embedded_database(tmp_path: Path) -> None:
    completed = run_ocrq(tmp_path, "migrate")

    engine = create_engine(f"sqlite:///{tmp_path / 'ocrq.db'}")
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert completed.returncode == 0, completed.stderr
    assert {"jobs", "pages", "alembic_version"} <= tables


def test_worker_without_broker_is_usage_error(tmp_path: Path) -> None:
    completed = run_ocrq(tmp_path, "worker")

    assert completed.returncode == 2
    assert "OCRQ_BROKER_URL" in completed.stderr
    assert "Traceback" not in completed.stderr
