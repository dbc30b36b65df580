#!/usr/bin/env bash
# The BH2 benchmark pipeline: for each scenario x mode x concurrency x repeat, a
# fresh `rlinks serve` (or nginx) on a fresh data folder and a free loopback
# port, driven by wrk; then KV writes per hit against --window and the
# aggregator's throughput on an ingested log. Results land in $OUT. Method:
# benchmarks/README.md. Needs wrk and nginx (apt-get install wrk nginx-light).
#
# Knobs (environment; unset = the default in brackets):
#   REQUESTS       requests per run                  [5000; 300 with QUICK=1]
#   CONCURRENCIES  wrk connections                   ["1 10 50 100"]
#   REPEATS        runs per cell                     [3; 1 with QUICK=1]
#   SCENARIOS      of: hot zipf uniform              [all]
#   MODES          of: off append-commit append-async kv-0ms kv-5ms nginx-302  [all]
#   QUICK=1        smoke run: small REQUESTS, one repeat, short sweep, small log
#   SWEEP_WINDOWS  --window values for the sweep ('' skips it)   ["0.1 1 10"; "0.1 1" quick]
#   SWEEP_SECONDS  seconds of load per sweep run     [20; 2 with QUICK=1]
#   AGG_HITS       hits for the aggregator throughput run (0 skips)  [2000000; 20000 quick]
#   OUT            results folder                    [benchmarks/results]
#
#   REPEATS=1 benchmarks/run_bh2.sh
#   QUICK=1 SCENARIOS=hot MODES="append-commit nginx-302" OUT=/tmp/r benchmarks/run_bh2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

args=(--out "${OUT:-benchmarks/results}")
[ -n "${REQUESTS:-}" ] && args+=(--requests "$REQUESTS")
[ -n "${CONCURRENCIES:-}" ] && args+=(--concurrencies "$CONCURRENCIES")
[ -n "${REPEATS:-}" ] && args+=(--repeats "$REPEATS")
[ -n "${SCENARIOS:-}" ] && args+=(--scenarios "$SCENARIOS")
[ -n "${MODES:-}" ] && args+=(--modes "$MODES")
[ "${QUICK:-0}" = 1 ] && args+=(--quick)
[ -n "${SWEEP_WINDOWS+set}" ] && args+=(--sweep-windows "$SWEEP_WINDOWS")
[ -n "${SWEEP_SECONDS:-}" ] && args+=(--sweep-seconds "$SWEEP_SECONDS")
[ -n "${AGG_HITS:-}" ] && args+=(--agg-hits "$AGG_HITS")

exec "$PYTHON" benchmarks/bh2_bench.py "${args[@]}"
