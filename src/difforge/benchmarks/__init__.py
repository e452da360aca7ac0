"""Benchmarks of samplers on the exact score of a Gaussian mixture (the oracle).

- ``oracle_metrics``: the two test laws and their metrics (W1 / sliced W1, mode-mass error).
- ``diffusers_peer``: every diffusers scheduler configuration that fits, fed the oracle's exact
  noise prediction.
- ``difforge_configs``: every difforge sampler of the registry on every sigma grid.
- ``sampler_tables``: picking the best configurations and the markdown tables of the report.

``scripts/bench_samplers.py`` is the entry point.

Posterior samplers on the exact posterior of a mixture prior (issue 22):

- ``posterior``: the test-bed problems, the exact isotropic-mixture denoiser, the leaderboard
  and the SMC sweep (``scripts/bench_posterior.py``).
- ``posterior_peers``: deepinv's and diffusers' posterior samplers on the same problems with the
  same denoiser (``scripts/bench_posterior_peers.py``).
"""
