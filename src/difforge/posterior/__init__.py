"""Diffusion as a prior: measurement operators, the exact posterior of a Gaussian-mixture prior,
and posterior samplers for inverse problems (y = A x + sigma_y n). Imports torch only, like
``difforge.diffusion``.
"""
