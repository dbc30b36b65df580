"""The BH2 benchmark pipeline (`benchmarks/run_bh2.sh`, driven by `bh2_bench.py`).

One module per concept: `knobs` (what to run), `workload` (routes and request
paths per scenario), `servers` (rlinks and nginx processes), `wrk` (the load
generator), `probes` (staleness), `kvcost` (KV calls per hit from
`rlinks-bh2 status`), `runs` (one measured run), `results` (files), `plots`,
`machine` (env.json) and `expectations` (the claims checked against a run).
"""
