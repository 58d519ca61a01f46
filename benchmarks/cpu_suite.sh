#!/usr/bin/env bash
# The CPU benchmark suite behind docs/performance.md: every benchmark at 1 and 2 intra-op
# threads (each script interleaves what it compares and records the load average), JSON into
# benchmarks/results/. About 30-40 minutes on an idle 2-core machine.
#   bash benchmarks/cpu_suite.sh [extra python args, e.g. --repeats 5]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
$PY benchmarks/bench_par.py --threads 1 2 "$@"
$PY benchmarks/bench_pseudo_labels.py --threads 1 2 "$@"
$PY benchmarks/bench_infer.py --threads 1 2 "$@"
$PY benchmarks/bench_train.py --threads 1 2 "$@"
