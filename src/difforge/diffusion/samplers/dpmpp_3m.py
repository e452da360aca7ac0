"""DPM-Solver++(3M): the third-order multistep data-prediction solver of the probability-flow ODE
(Lu et al. 2022, "DPM-Solver++", eq. 8 with a second-order Taylor polynomial of x0 in lambda).

With lambda = -log sigma, h = lambda_{i+1} - lambda_i and the divided differences D1, D2 of the
last three denoised estimates (``dpmpp_multistep.py``):

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h} - 1) x0_i + phi_2(h) D1 - phi_3(h) D2,
    phi_2(h) = (e^{-h} - 1) / h + 1,   phi_3(h) = (e^{-h} - 1 + h) / h^2 - 1/2,

as diffusers' DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++").
First and second order at the first two steps (``solver_type`` picks the second-order update);
with ``lower_order_final``, second then first order at the last two; a
step to sigma = 0 returns x0. Deterministic, one NFE per step.
"""

from difforge.diffusion.samplers.dpmpp_multistep import ode_solver

sample_dpmpp_3m = ode_solver(3)
