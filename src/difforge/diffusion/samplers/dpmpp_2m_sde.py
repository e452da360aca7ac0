"""DPM-Solver++(2M) SDE: the second-order multistep solver of the reverse SDE in data prediction
(Lu et al. 2022, "DPM-Solver++", SDE-DPM-Solver++(2M); k-diffusion's ``sample_dpmpp_2m_sde``).

With lambda = -log sigma, h = lambda_{i+1} - lambda_i, H = (1 + eta) h, r = h_{i-1} / h and
D1 = (x0_i - x0_{i-1}) / r:

    x_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h} x_i + (1 - e^{-H}) x0_i + c_1 D1
              + s_noise sigma_{i+1} sqrt(1 - e^{-2 eta h}) z,
    c_1 = (1 - e^{-H}) / 2 ("midpoint") or 1 - (1 - e^{-H}) / H ("heun"),

eta = 1 being diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++") and
eta = 0 the ODE solver DPM-Solver++(2M). First order at the first step, at the last one with
``lower_order_final``; a step to sigma = 0 returns x0 without noise.
Fresh i.i.d. noise per step (k-diffusion's default draws from a Brownian tree instead). One NFE
per step.
"""

from difforge.diffusion.samplers.dpmpp_multistep import sde_solver

sample_dpmpp_2m_sde = sde_solver(2)
