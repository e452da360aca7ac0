"""DPM-Solver++(3M) SDE: the third-order multistep solver of the reverse SDE in data prediction
(Lu et al. 2022, "DPM-Solver++", SDE-DPM-Solver++ with a second-order Taylor polynomial of x0;
k-diffusion's ``sample_dpmpp_3m_sde``).

With lambda = -log sigma, h = lambda_{i+1} - lambda_i, H = (1 + eta) h and the divided
differences D1, D2 of the last three denoised estimates (``dpmpp_multistep.py``):

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-H}) x0_i + phi_2(H) D1
              - phi_3(H) D2 + s_noise sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,
    phi_2(H) = (e^{-H} - 1) / H + 1,   phi_3(H) = (e^{-H} - 1 + H) / H^2 - 1/2.

eta = 0 is DPM-Solver++(3M). Warm-up, ``solver_type`` and ``lower_order_final`` as ``dpmpp_3m``;
a step to sigma = 0 returns x0 without noise. One NFE per step. diffusers'
algorithm_type="sde-dpmsolver++" with solver_order=3 is not the same update: see
``dpmpp_multistep.py``.
"""

from difforge.diffusion.samplers.dpmpp_multistep import sde_solver

sample_dpmpp_3m_sde = sde_solver(3)
