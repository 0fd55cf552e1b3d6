"""The settings, database, storage and engine source shared by a job's attempt and its pages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.db import Database
from core.settings import Settings
from core.storage import Storage
from models.engine import Engine

EngineProvider = Callable[[str], Engine]


# Called after each page with (pages_done, pages_total), e.g. to move a progress bar.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PipelineContext:
    """The settings, database, storage and engine source that an attempt runs with."""

    settings: Settings
    database: Database
    storage: Storage
    engines: EngineProvider
