"""`ocrq bench cpu|model`: benchmarks; subcommands live in bench_cpu.py and bench_model.py."""

import click


@click.group()
def bench() -> None:
    """Measure accuracy and speed."""
