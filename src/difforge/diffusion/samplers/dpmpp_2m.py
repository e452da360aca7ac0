"""DPM-Solver++(2M): the multistep second-order data-prediction solver of the probability-flow
ODE (Lu et al. 2022, "DPM-Solver++", algorithm 2).

With lambda = -log sigma (VE frame; equal to log(alpha / sigma_vp)) and h_i = lambda_{i+1} - lambda_i:

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (exp(-h_i) - 1) D_i,
    D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1},   r_i = h_{i-1} / h_i,

("midpoint"; ``solver_type="heun"`` weights the difference by phi_2 instead, see
``dpmpp_multistep.py``), as diffusers' DPMSolverMultistepScheduler(solver_order=2,
algorithm_type="dpmsolver++"). First order at the first step; with ``lower_order_final``,
first order at the last one too (which matters on a grid ending at
sigma_min: a second-order step over the long last interval overshoots); a step to sigma = 0
returns x0. Deterministic, one NFE per step.
"""

from difforge.diffusion.samplers.dpmpp_multistep import ode_solver

sample_dpmpp_2m = ode_solver(2)
