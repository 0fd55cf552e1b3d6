"""`ocrq run`: the whole job pipeline in this process, on the embedded defaults.

Each file becomes a job in the embedded database (SQLite under OCRQ_DATA_DIR, migrated on first
use) and local storage, and runs through the same pipeline a Celery worker uses. Markdown goes to
stdout, logs to stderr at WARNING unless --verbose, and the progress bar to stderr as well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from core.jobs import JobService

SAMPLE_PATH = Path(__file__).parent / "samples" / "phototest.tif"
ENGINES = ("auto", "deepseek-ocr", "rapidocr")
MODES = ("tiny", "small", "base", "large", "gundam")
TASKS = ("markdown", "ocr", "free", "figure", "describe", "locate")


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--engine", type=click.Choice(ENGINES), help="Engine (default: OCRQ_ENGINE).")
@click.option("--mode", type=click.Choice(MODES), default="gundam", show_default=True)
@click.option("--task", type=click.Choice(TASKS), default="markdown", show_default=True)
@click.option("--target", help="Phrase to find, for --task locate.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
    help="What to print on stdout.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help=(
        "Write NAME.md, NAME.json and figures/NAME/ into this folder instead of stdout. NAME is "
        "the file's stem, or STEM-2, STEM-3, ... when an earlier input of the run or a file "
        "already in the folder has it; nothing is overwritten."
    ),
)
@click.option("--password", help="Password of encrypted PDFs.")
@click.option("--sample", is_flag=True, help="Also read the bundled sample page (phototest.tif).")
@click.option("--keep", is_flag=True, help="Keep jobs and their files in OCRQ_DATA_DIR afterwards.")
@click.option("--verbose", "-v", is_flag=True, help="Log at INFO instead of WARNING (stderr).")
def run(
    files: tuple[Path, ...],
    engine: str | None,
    mode: str,
    task: str,
    target: str | None,
    output_format: str,
    out: Path | None,
    password: str | None,
    sample: bool,
    keep: bool,
    verbose: bool,
) -> None:
    """Run OCR on FILE... in this process and print the markdown."""
    from core.celery_app import set_embedded_runner
    from core.db import upgrade_database
    from core.errors import InputError
    from core.job_options import check_job_options
    from core.jobs import JobService
    from core.logging import configure_logging
    from core.settings import load_settings
    from worker.runner import build_context, run_job_inline

    paths = [*files, SAMPLE_PATH] if sample else list(files)
    if not paths:
        raise click.UsageError("no FILE given; pass one or more documents, or --sample")

    settings = load_settings().model_copy(update={"broker_url": None})
    if engine:
        settings = settings.model_copy(update={"engine": engine})
    try:
        check_job_options(settings.engine, mode, task, target, model_path=settings.model_path)
    except InputError as exc:
        # One line before any work, instead of the same failure once per file.
        raise click.ClickException(f"{exc.message} (code {exc.code})") from exc
    configure_logging("INFO" if verbose else "WARNING")
    upgrade_database(settings.resolved_database_url)
    context = build_context(settings)
    # Load the engine before the first job, so a bad engine setting stops the command with one
    # error line instead of failing each job in turn.
    context.engines(settings.engine)
    service = JobService(settings, context.database, context.storage)
    progress = _Progress()

    def run_inline(job_id: str) -> None:
        progress.update(0, service.get_job(job_id).pages_total or 0)
        run_job_inline(job_id, context, password=password, on_page=progress.update)

    set_embedded_runner(run_inline)
    failures = 0
    outputs: list[tuple[Path, dict[str, Any]]] = []
    taken: set[str] = set()
    try:
        for path in paths:
            result = _run_one(service, path, engine, mode, task, target, password, progress)
            if result is None:
                failures += 1
                continue
            outputs.append((path, result))
            if out is not None:
                _write_outputs(service, out, path, result, taken)
            if not keep:
                service.delete_job(result["job_id"])
    finally:
        set_embedded_runner(None)
        progress.close()

    if out is None:
        _print_outputs(outputs, output_format)
    if failures:
        sys.exit(1)


class _Progress:
    """A tqdm bar on stderr for documents of more than one page."""

    def __init__(self) -> None:
        self.bar: Any = None

    def start(self, name: str) -> None:
        self.close()
        self.name = name

    def update(self, pages_done: int, pages_total: int) -> None:
        if pages_total <= 1:
            return
        if self.bar is None:
            from tqdm import tqdm

            # The job's start calls this with 0 pages done, so the bar starts at 0.
            self.bar = tqdm(total=pages_total, desc=self.name, unit="page", file=sys.stderr)
        if pages_done > self.bar.n:
            self.bar.update(pages_done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run_one(
    service: JobService,
    path: Path,
    engine: str | None,
    mode: str,
    task: str,
    target: str | None,
    password: str | None,
    progress: _Progress,
) -> dict[str, Any] | None:
    """Run one file's job; return its result, or print one error line and return None."""
    from core.errors import OcrError
    from core.states import JobStatus

    progress.start(path.name)
    try:
        job = service.create_job(
            path,
            filename=path.name,
            engine=engine,
            mode=mode,
            task=task,
            target=target,
            password=password,
        )
    except OcrError as exc:
        message = exc.message
        if exc.code == "pdf_password_required":
            message = "The PDF is protected by a user password; pass it with --password."
        click.echo(f"error: {path}: {message} (code {exc.code})", err=True)
        return None
    finally:
        progress.close()

    if job.status not in (JobStatus.SUCCEEDED, JobStatus.PARTIAL):
        code = job.error_code or job.status
        message = job.error_message or f"the job ended as {job.status}"
        click.echo(f"error: {path}: {message} (code {code})", err=True)
        return None
    if job.status == JobStatus.PARTIAL:
        click.echo(f"warning: {path}: {job.error_message}", err=True)
    return service.get_result(job.id)


def _write_outputs(
    service: JobService, out: Path, path: Path, result: dict[str, Any], taken: set[str]
) -> None:
    """Write NAME.md, NAME.json and the figure crops under `out`/figures/NAME/.

    NAME is the first of STEM, STEM-2, STEM-3, ... that no earlier input of this run took and
    no file in `out` has, so two inputs named x.tif and x.pdf never overwrite each other.
    The markdown's figure links point into figures/NAME/.
    """
    from core.storage import figure_key

    out.mkdir(parents=True, exist_ok=True)
    name = _output_name(out, path.stem, taken)
    if name != path.stem:
        click.echo(f"note: {path}: written as {name}.md, {path.stem}.md is taken", err=True)
    markdown = result["markdown"].replace("](figures/", f"](figures/{name}/")
    (out / f"{name}.md").write_text(markdown + "\n", encoding="utf-8")
    (out / f"{name}.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )

    names = service.list_figures(result["job_id"])
    if names:
        (out / "figures" / name).mkdir(parents=True, exist_ok=True)
    for figure in names:
        data = service.storage.get_bytes(figure_key(result["job_id"], figure))
        (out / "figures" / name / figure).write_bytes(data)


def _output_name(out: Path, stem: str, taken: set[str]) -> str:
    """Return the first free output name for `stem`, and record it in `taken`."""
    number = 1
    name = stem
    while (
        name in taken
        or (out / f"{name}.md").exists()
        or (out / f"{name}.json").exists()
        or (out / "figures" / name).exists()
    ):
        number += 1
        name = f"{stem}-{number}"
    taken.add(name)
    return name


def _print_outputs(outputs: list[tuple[Path, dict[str, Any]]], output_format: str) -> None:
    if output_format == "json":
        documents = [result for _path, result in outputs]
        payload = documents[0] if len(documents) == 1 else documents
        click.echo(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    for number, (path, result) in enumerate(outputs):
        if len(outputs) > 1:
            if number:
                click.echo()
            click.echo(f"<!-- ocrq: {path.name} -->")
        click.echo(result["markdown"])
