"""`ocrq bench cpu|model`: benchmarks; subcommands live in bench_cpu.py and bench_model.py."""

import click


@click.group()
def bench() -> None:
    """Measure accuracy and speed."""


# Subcommands are added after the group exists; each module keeps its heavy imports inside.
from cli import bench_cpu, bench_model  # noqa: E402

bench.add_command(bench_cpu.bench_cpu)
bench.add_command(bench_model.bench_model)
