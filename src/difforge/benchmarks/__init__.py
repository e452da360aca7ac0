"""Benchmarks of samplers on the exact score of a Gaussian mixture (the oracle).

- ``oracle_metrics``: the two test laws and their metrics (W1 / sliced W1, mode-mass error).
- ``diffusers_peer``: every diffusers scheduler configuration that fits, fed the oracle's exact
  noise prediction.
- ``difforge_configs``: every difforge sampler of the registry on every sigma grid.
- ``sampler_tables``: picking the best configurations and the markdown tables of the report.

``scripts/bench_samplers.py`` is the entry point.
"""
