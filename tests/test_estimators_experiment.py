"""The estimators experiment's truths: closed forms against Monte Carlo and the kernel module."""

import math

import jax
import numpy as np

import fdiv
from experiments import estimators
from fdiv import kernel


def test_gaussian_closed_forms_agree_with_monte_carlo():
    p, q = estimators._gauss_pair(4, 0.5, 1.2)
    closed = estimators._gauss_closed_forms(
        p.means[0], p.variances[0], q.means[0], q.variances[0], 4
    )
    x_q = q.sample(jax.random.PRNGKey(0), 400_000)
    log_p, log_q = p.log_prob(x_q), q.log_prob(x_q)
    for name, value in closed.items():
        est, se = fdiv.mc_divergence_from_model_samples(log_p, log_q, fdiv.get(name))
        assert abs(float(est) - value) < 4 * float(se) + 1e-4, (name, float(est), value, float(se))


def test_mixture_kernel_truth_reduces_to_gaussian_closed_forms():
    p, q = estimators._gauss_pair(3, 0.8, 1.5)
    s = math.sqrt(3)
    pp = estimators._mixture_log_mean_kernel(p, p, s)
    qq = estimators._mixture_log_mean_kernel(q, q, s)
    pq = estimators._mixture_log_mean_kernel(p, q, s)
    args = (p.means[0], p.variances[0] * np.eye(3), q.means[0], q.variances[0] * np.eye(3))
    np.testing.assert_allclose(
        pp + qq - 2 * pq, float(kernel.gaussian_cauchy_schwarz(*args, bandwidth=s)), rtol=1e-5
    )
    np.testing.assert_allclose(
        math.exp(pp) + math.exp(qq) - 2 * math.exp(pq),
        float(kernel.gaussian_mmd2(*args, bandwidth=s)),
        rtol=1e-4,
    )
