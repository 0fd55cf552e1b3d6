#!/usr/bin/env bash
# Benchmark the CPU engine (rapidocr) on the corpus and keep the JSON under bench/results/.
# Extra arguments go to `ocrq bench cpu`, e.g. --corpus DIR or --only linn.png.
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ocrq="${OCRQ_BIN:-${repo_dir}/.venv/bin/ocrq}"
results_dir="${repo_dir}/bench/results"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"

mkdir -p "${results_dir}"
"${ocrq}" bench cpu --out "${results_dir}/cpu-${stamp}.json" "$@"
echo "results: ${results_dir}/cpu-${stamp}.json" >&2
