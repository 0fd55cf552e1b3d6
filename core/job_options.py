"""The options a job is submitted with: modes, tasks and engines, and the checks they must pass.

The API, batches and `ocrq run` check a job's options here before anything is stored, so bad
options never become a job.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import InputError, TransientError
from core.settings import Settings
from core.ssrf import check_url, parse_allowlist

# The same names as models.engine.MODES and TASKS (core may not import models; a test pins it).
JOB_MODES = ("tiny", "small", "base", "large", "gundam")
JOB_TASKS = ("markdown", "ocr", "free", "figure", "describe", "locate")
JOB_ENGINES = ("auto", "deepseek-ocr", "rapidocr")
# The tasks models.rapidocr_engine accepts; it has no model for figure or describe.
RAPIDOCR_TASKS = ("markdown", "ocr", "free", "locate")
DEFAULT_MODE = "gundam"
DEFAULT_TASK = "markdown"


def resolve_engine(engine: str, model_path: Path | None) -> str:
    """Return the concrete engine: auto means deepseek-ocr when weights are set, else rapidocr.

    The same rule as models.registry.resolve_engine_name (core may not import models), so the
    API, which shares the worker's engine settings, judges a job as the worker will run it.
    """
    if engine == "auto":
        return "deepseek-ocr" if model_path is not None else "rapidocr"
    return engine


def check_job_options(
    engine: str, mode: str, task: str, target: str | None, *, model_path: Path | None
) -> None:
    """Raise InputError (422) when an engine, mode, task or locate target is invalid.

    `model_path` is OCRQ_MODEL_PATH, which decides what engine auto resolves to.
    """
    choices = {
        "engine": (engine, JOB_ENGINES),
        "mode": (mode, JOB_MODES),
        "task": (task, JOB_TASKS),
    }
    for field, (value, allowed) in choices.items():
        if value not in allowed:
            message = f"Expected {field} to be one of {', '.join(allowed)}, got {value!r}."
            raise InputError(message, code=f"invalid_{field}", http_status=422)
    if task == "locate" and not (target and target.strip()):
        message = "Expected a target phrase for task 'locate', got none."
        raise InputError(message, code="missing_target", http_status=422)
    if resolve_engine(engine, model_path) == "rapidocr" and task not in RAPIDOCR_TASKS:
        message = f"Expected task {', '.join(RAPIDOCR_TASKS)} for engine rapidocr, got {task!r}."
        if engine == "auto":
            message += " Engine auto means rapidocr here because OCRQ_MODEL_PATH is not set."
        raise InputError(message, code="unsupported_task", http_status=422)


def check_webhook_url(url: str | None, settings: Settings) -> None:
    """Raise InputError (422) when a job's or batch's webhook_url fails the SSRF guard.

    The codes are core.ssrf's: invalid_url, url_not_allowed (loopback, private, link-local and
    metadata addresses, unless OCRQ_URL_ALLOWLIST names them) and url_fetch_failed (a host
    that does not resolve). A temporary DNS failure passes: each delivery checks again.
    """
    if not url:
        return
    try:
        check_url(url, parse_allowlist(settings.url_allowlist))
    except TransientError:
        return
    except UnicodeError as exc:
        # getaddrinfo raises this for host names that IDNA cannot encode (empty labels, ...).
        message = f"Expected a webhook_url with a valid host name, got {url[:200]!r}."
        raise InputError(message, code="invalid_url") from exc
    except InputError as exc:
        raise InputError(f"webhook_url: {exc.message}", code=exc.code, http_status=422) from exc
