"""`ocrq bench cpu`: accuracy and speed of the rapidocr engine on corpus files with ground truth.

A file takes part when `<stem>.gt.txt` sits next to it. Pages come from worker.rasterize, as in a
job, so PDFs are rendered at OCRQ_PDF_RENDER_DPI. The pages' markdown is joined with form feeds
(the ground truth's page separator) and scored with cli.bench_metrics, the code the engine tests
use: whitespace-normalised CER and bag-of-words F1. Seconds per page count the engine only, not
decoding or rendering.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from models.rapidocr_engine import RapidOcrEngine

GROUND_TRUTH_SUFFIX = ".gt.txt"
DEFAULT_CORPUS_DIR = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TABLE_HEADER = f"{'file':<36} {'pages':>5} {'CER':>7} {'wordF1':>7} {'s/page':>7}"


@dataclass(frozen=True)
class FileScore:
    """The benchmark row of one corpus file; `skipped` is the reason it could not be read."""

    file: str
    pages: int
    cer: float | None
    word_f1: float | None
    seconds_per_page: float | None
    skipped: str | None = None


@click.command("cpu")
@click.option(
    "--corpus",
    "corpus_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="OCRQ_CORPUS_DIR",
    default=DEFAULT_CORPUS_DIR,
    show_default=True,
    help="Folder of documents with <stem>.gt.txt ground truth (env OCRQ_CORPUS_DIR).",
)
@click.option(
    "--only",
    "only_names",
    multiple=True,
    help="Benchmark only this file name (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON results to this file.",
)
def bench_cpu(
    corpus_dir: Path, only_names: tuple[str, ...], as_json: bool, out: Path | None
) -> None:
    """Print CER, word F1 and seconds per page of the rapidocr engine per corpus file."""
    from models.rapidocr_engine import RapidOcrEngine

    documents = find_scored_documents(corpus_dir, only_names)
    if not documents:
        message = f"no file with a {GROUND_TRUTH_SUFFIX} ground truth found in {corpus_dir}"
        raise click.UsageError(message)

    engine = RapidOcrEngine()
    if not as_json:
        click.echo(TABLE_HEADER)
    scores = []
    for path in documents:
        score = score_document(engine, path)
        scores.append(score)
        if not as_json:
            click.echo(format_row(score))

    results = {
        "engine": engine.name,
        "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "files": [asdict(score) for score in scores],
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if as_json:
        click.echo(json.dumps(results, indent=2))


def find_scored_documents(corpus_dir: Path, only_names: tuple[str, ...] = ()) -> list[Path]:
    """Return the documents in `corpus_dir` that have a ground-truth file, sorted by name."""
    documents = []
    for path in sorted(corpus_dir.iterdir()):
        if path.name.endswith(GROUND_TRUTH_SUFFIX) or not path.is_file():
            continue
        if only_names and path.name not in only_names:
            continue
        if ground_truth_path(path).is_file():
            documents.append(path)
    return documents


def ground_truth_path(document: Path) -> Path:
    return document.with_name(document.stem + GROUND_TRUTH_SUFFIX)


def score_document(engine: RapidOcrEngine, path: Path) -> FileScore:
    """Read every page of one document and score the joined markdown against its ground truth."""
    from cli.bench_metrics import character_error_rate, word_f1
    from core.documents import Limits
    from core.errors import InputError
    from core.settings import get_settings
    from models.engine import PageInput, PageOptions
    from worker.rasterize import iter_pages

    limits = Limits.from_settings(get_settings())
    options = PageOptions()
    page_texts: list[str] = []
    engine_s = 0.0
    try:
        for page in iter_pages(path, limits):
            started = time.perf_counter()
            (result,) = engine.run_pages([PageInput(page.image, page.index)], options)
            engine_s += time.perf_counter() - started
            page_texts.append(result.markdown)
    except InputError as exc:
        return FileScore(path.name, len(page_texts), None, None, None, skipped=exc.message)

    hypothesis = "\f".join(page_texts)
    reference = ground_truth_path(path).read_text(encoding="utf-8")
    pages = len(page_texts)
    return FileScore(
        file=path.name,
        pages=pages,
        cer=round(character_error_rate(hypothesis, reference), 4),
        word_f1=round(word_f1(hypothesis, reference), 4),
        seconds_per_page=round(engine_s / pages, 2) if pages else None,
    )


def format_row(score: FileScore) -> str:
    if score.skipped is not None:
        return f"{score.file:<36} skipped: {score.skipped}"
    return (
        f"{score.file:<36} {score.pages:>5} {_number(score.cer, 3):>7} "
        f"{_number(score.word_f1, 3):>7} {_number(score.seconds_per_page, 2):>7}"
    )


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
