"""Tests of fdiv.policy: f-DPG pseudo-rewards, the surrogate's gradient and the running states.

The gradient tests compare the Monte Carlo mean of the surrogate's gradient with the exact
gradient of ``fdiv.categorical_divergence`` for a categorical policy ``softmax(theta)``: the
tolerance is a multiple of the standard error of the per-sample gradients (fixed seeds). With
30 coordinates and 40 estimator configurations a 4.5-SE bound fails by chance with probability
below 1% for a correct estimator, while a biased one (wrong reward, missing importance weight,
a baseline that depends on the sample) is off by tens of standard errors.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import fdiv
from fdiv import policy
from fdiv.policy import MovingBaseline, RunningNormalizer, fdpg_loss, pseudo_reward

DIVERGENCES = ("forward_kl", "reverse_kl", "js", "total_variation", "pearson")
NUM_OUTCOMES = 30
NUM_SAMPLES = 100_000
SE_BOUND = 4.5
# Unnormalised target: the test passes target logits shifted by an arbitrary constant.
LOG_OFFSET = 3.7


def _problem():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    target_logits = jax.random.normal(k1, (NUM_OUTCOMES,))
    theta = 0.5 * jax.random.normal(k2, (NUM_OUTCOMES,))
    # A proposal near the model (DPG's proposal is an earlier copy of it).
    proposal_logits = theta + 0.3 * jax.random.normal(k3, (NUM_OUTCOMES,))
    return target_logits, theta, proposal_logits


def _exact_gradient(target_logits, theta, divergence):
    return jax.grad(lambda t: fdiv.categorical_divergence(target_logits, t, divergence))(theta)


def _batch_loss(theta, x, log_target, divergence, log_proposal, baseline, log_normalizer):
    log_model = jax.nn.log_softmax(theta)[x]
    return fdpg_loss(
        log_model,
        log_target,
        divergence,
        log_proposal=log_proposal,
        baseline=baseline,
        log_normalizer=log_normalizer,
    )


@functools.lru_cache(maxsize=None)
def _per_sample_gradient_fn(divergence, with_proposal):
    """Jitted [n, K] per-sample gradients, compiled once per (divergence, proposal or not):
    the parameters, baseline and normaliser are traced arguments."""

    def one(theta, xi, lt, lq, baseline, log_normalizer):
        lq = lq[None] if with_proposal else None

        def loss(t):
            return _batch_loss(t, xi[None], lt[None], divergence, lq, baseline, log_normalizer)[0]

        return jax.grad(loss)(theta)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, None, None)))


def _per_sample_gradients(theta, x, log_target, divergence, log_proposal, baseline, log_normalizer):
    """[n, K] gradients of the one-sample surrogate (the terms the batch gradient averages)."""
    lq = jnp.zeros_like(log_target) if log_proposal is None else log_proposal
    fn = _per_sample_gradient_fn(divergence, log_proposal is not None)
    return fn(theta, x, log_target, lq, jnp.asarray(baseline, jnp.float32), log_normalizer)


def _samples(key, logits, n=NUM_SAMPLES):
    return jax.random.categorical(key, logits, shape=(n,))


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("use_proposal", [False, True], ids=["on_policy", "proposal"])
def test_gradient_matches_exact_divergence_gradient(divergence, use_proposal):
    target_logits, theta, proposal_logits = _problem()
    exact = _exact_gradient(target_logits, theta, divergence)
    sampler = proposal_logits if use_proposal else theta
    x = _samples(jax.random.key(1), sampler)
    log_target = target_logits[x] + LOG_OFFSET
    log_proposal = jax.nn.log_softmax(proposal_logits)[x] if use_proposal else None
    log_z = jax.nn.logsumexp(target_logits) + LOG_OFFSET

    # A baseline from an independent earlier batch, as MovingBaseline provides it in training.
    x_old = _samples(jax.random.key(2), sampler, 4096)
    _, aux_old = _batch_loss(
        theta,
        x_old,
        target_logits[x_old] + LOG_OFFSET,
        divergence,
        None if log_proposal is None else jax.nn.log_softmax(proposal_logits)[x_old],
        0.0,
        log_z,
    )
    old_baseline = MovingBaseline.ema(0.9).update(aux_old["mean_reward"]).value
    assert abs(float(old_baseline)) > 0.02  # a baseline that actually shifts the rewards

    variances = {}
    for name, baseline in (("none", 0.0), ("moving", old_baseline)):
        per_sample = _per_sample_gradients(
            theta, x, log_target, divergence, log_proposal, baseline, log_z
        )
        se = jnp.std(per_sample, axis=0, ddof=1) / np.sqrt(NUM_SAMPLES)
        grad = jax.grad(
            lambda t: _batch_loss(t, x, log_target, divergence, log_proposal, baseline, log_z)[0]
        )(theta)
        np.testing.assert_allclose(grad, jnp.mean(per_sample, axis=0), rtol=1e-3, atol=5e-5)
        z = np.asarray((grad - exact) / se)
        assert np.all(np.abs(z) < SE_BOUND), (name, z)
        # The normaliser estimated from the batch (bias O(1/n), far below the SE here).
        grad_est = jax.grad(
            lambda t: _batch_loss(t, x, log_target, divergence, log_proposal, baseline, None)[0]
        )(theta)
        z_est = np.asarray((grad_est - exact) / se)
        assert np.all(np.abs(z_est) < SE_BOUND), (name, z_est)
        variances[name] = float(jnp.sum(jnp.var(per_sample, axis=0)))
    # Same samples with and without the baseline: the reduction is a paired comparison.
    assert variances["moving"] < (0.99 if use_proposal else 0.96) * variances["none"], variances


def test_gradient_test_detects_a_biased_estimator():
    # The same check on an estimator without the importance weights must fail: the test above
    # can tell a correct estimator from a wrong one at this sample size.
    target_logits, theta, proposal_logits = _problem()
    exact = _exact_gradient(target_logits, theta, "js")
    x = _samples(jax.random.key(1), proposal_logits)
    log_target = target_logits[x] + LOG_OFFSET
    log_z = jax.nn.logsumexp(target_logits) + LOG_OFFSET
    per_sample = _per_sample_gradients(theta, x, log_target, "js", None, 0.0, log_z)
    se = jnp.std(per_sample, axis=0, ddof=1) / np.sqrt(NUM_SAMPLES)
    z = (jnp.mean(per_sample, axis=0) - exact) / se
    assert float(jnp.max(jnp.abs(z))) > 10.0


def test_divergence_estimate_ess_and_rewards_in_aux():
    target_logits, theta, proposal_logits = _problem()
    x = _samples(jax.random.key(3), proposal_logits)
    log_q = jax.nn.log_softmax(proposal_logits)[x]
    log_pi = jax.nn.log_softmax(theta)[x]
    _, aux = fdpg_loss(log_pi, target_logits[x] + LOG_OFFSET, "js", log_proposal=log_q)
    exact = fdiv.categorical_divergence(target_logits, theta, "js")
    np.testing.assert_allclose(aux["divergence"], exact, rtol=0.05)
    np.testing.assert_allclose(
        aux["log_normalizer"], jax.nn.logsumexp(target_logits) + LOG_OFFSET, atol=0.02
    )
    w = np.exp(np.asarray(log_pi - log_q, np.float64))
    np.testing.assert_allclose(aux["ess"], w.sum() ** 2 / (w**2).sum(), rtol=1e-4)
    u = np.exp(
        np.asarray(target_logits[x] + LOG_OFFSET - aux["log_normalizer"] - log_pi, np.float64)
    )
    reward = 0.5 * np.log((u + 1) / 2)  # docs/reference.md section 10
    np.testing.assert_allclose(aux["mean_reward"], reward.mean(), rtol=1e-4)
    np.testing.assert_allclose(aux["mean_weighted_reward"], (w * reward).mean(), rtol=1e-4)
    _, aux_on = fdpg_loss(log_pi, target_logits[x], "js")
    assert float(aux_on["ess"]) == pytest.approx(NUM_SAMPLES, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Pseudo-rewards against arbitrary precision (docs/reference.md section 10).


def _mp_reward(divergence, log_u):
    l = mpmath.mpf(log_u)
    u = mpmath.exp(l)
    return {
        "forward_kl": lambda: u,
        "reverse_kl": lambda: l - 1,
        "js": lambda: mpmath.log((u + 1) / 2) / 2,
        "total_variation": lambda: mpmath.sign(l) / 2,
        "pearson": lambda: u * u - 1,
        "squared_hellinger": lambda: (mpmath.sqrt(u) - 1) / 2,
    }[divergence]()


_LOG_U_GRID = np.concatenate(
    [
        np.linspace(-80.0, 80.0, 161),
        [1e-7, -1e-7, 1e-4, -3e-3, 0.02, -0.6, 0.999, 1.001, 44.0, 45.0],
    ]
)


@pytest.mark.parametrize("divergence", DIVERGENCES + ("squared_hellinger",))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pseudo_reward_matches_mpmath(divergence, dtype):
    mpmath.mp.dps = 40
    with jax.enable_x64(dtype == "float64"):
        log_u = np.asarray(_LOG_U_GRID, dtype)
        got = np.asarray(pseudo_reward(jnp.asarray(log_u), jnp.zeros((), dtype), divergence))
    assert got.dtype == np.dtype(dtype)
    exact_log_u = log_u.astype(np.float64)
    ref = np.array([float(_mp_reward(divergence, x)) for x in exact_log_u])
    info = np.finfo(dtype)
    overflow = np.abs(ref) > info.max
    assert np.all(np.isposinf(got[overflow]))
    assert np.all(np.isfinite(got[~overflow]))
    tol = 8 * info.eps
    err = np.abs(got[~overflow] - ref[~overflow]) / np.maximum(np.abs(ref[~overflow]), info.tiny)
    assert err.max() < tol, (exact_log_u[~overflow][np.argmax(err)], err.max())


def test_pseudo_reward_edges_and_half_precision():
    minus_inf = jnp.array([-jnp.inf])
    assert float(pseudo_reward(minus_inf, jnp.zeros(1), "forward_kl")[0]) == 0.0
    assert float(pseudo_reward(minus_inf, jnp.zeros(1), "reverse_kl")[0]) == -np.inf
    np.testing.assert_allclose(
        pseudo_reward(minus_inf, jnp.zeros(1), "js"), [-0.5 * np.log(2)], rtol=1e-7
    )
    assert np.isnan(float(pseudo_reward(jnp.array([jnp.nan]), jnp.zeros(1), "js")[0]))
    log_p = jnp.array([-3.0, -0.5, 2.0], jnp.bfloat16)
    out = pseudo_reward(log_p, jnp.zeros(3, jnp.bfloat16), "js")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        out, 0.5 * np.log((np.exp(np.asarray(log_p, np.float32)) + 1) / 2), rtol=1e-6
    )
    # Broadcasting: one model log-probability against many targets.
    assert pseudo_reward(jnp.zeros((2, 3)), jnp.zeros(()), "pearson").shape == (2, 3)


def test_bounded_divergences_have_finite_gradients_at_extreme_logits():
    theta = jnp.array([1e4, -1e4, 0.0, 5e3])
    target_logits = jnp.array([-1e4, 1e4, 0.0, 0.0])
    x = jnp.array([0, 0, 3, 2])
    q = jnp.log(jnp.full(4, 0.25))
    for divergence in ("js", "total_variation"):  # bounded pseudo-rewards
        for log_proposal in (None, q[x]):
            grad, aux = jax.grad(
                lambda t: _batch_loss(t, x, target_logits[x], divergence, log_proposal, 0.1, None),
                has_aux=True,
            )(theta)
            assert np.all(np.isfinite(grad)), (divergence, grad)
            assert all(np.isfinite(float(v)) for v in aux.values()), (divergence, aux)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "pearson", "js"])
def test_weighted_reward_is_finite_where_the_weight_underflows(divergence):
    # A sample the proposal finds likely (q = e^-50) but the policy almost never draws
    # (pi = e^-200): w = pi/q underflows to 0 while u = p/pi overflows, and w R must be the
    # finite p/q-sized value, not 0 * inf = NaN.
    log_model = jnp.array([-200.0, -1.0, -2.0])
    log_proposal = jnp.array([-50.0, -1.5, -1.0])
    # Pearson's w R ~ p^2 / (pi q) must stay representable: a smaller p there.
    log_target = jnp.array([-100.0 if divergence == "pearson" else -40.0, -1.2, -3.0])
    log_z = 0.0

    def loss(lm):
        return fdpg_loss(
            lm, log_target, divergence, log_proposal=log_proposal, log_normalizer=log_z
        )

    value, aux = loss(log_model)
    grad = jax.grad(lambda lm: loss(lm)[0])(log_model)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad)), (value, grad)
    # Independent float64 computation of -d loss / d log pi_i = w_i R(u_i) / n.
    lm, lq, lp = (np.asarray(a, np.float64) for a in (log_model, log_proposal, log_target))
    mp = {
        "forward_kl": lambda l: mpmath.exp(l),
        "reverse_kl": lambda l: l - 1,
        "pearson": lambda l: mpmath.exp(2 * l) - 1,
        "js": lambda l: 0.5 * mpmath.log((mpmath.exp(l) + 1) / 2),
    }[divergence]
    want = [
        float(mpmath.exp(mpmath.mpf(a) - b) * mp(mpmath.mpf(c) - a)) / 3
        for a, b, c in zip(lm, lq, lp)
    ]
    np.testing.assert_allclose(-np.asarray(grad, np.float64), want, rtol=1e-4, atol=1e-30)
    assert np.isfinite(float(aux["mean_weighted_reward"]))


# ----------------------------------------------------------------------------------------------
# jit and no-jit.


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_loss_and_gradient_same_with_and_without_jit(self):
        target_logits, theta, proposal_logits = _problem()
        x = _samples(jax.random.key(4), proposal_logits, 512)
        log_q = jax.nn.log_softmax(proposal_logits)[x]

        @self.variant
        def value_and_grad(t, baseline):
            return jax.value_and_grad(
                lambda t: _batch_loss(t, x, target_logits[x], "js", log_q, baseline, None),
                has_aux=True,
            )(t)

        (loss, aux), grad = value_and_grad(theta, jnp.float32(0.2))
        (loss_ref, aux_ref), grad_ref = jax.value_and_grad(
            lambda t: _batch_loss(t, x, target_logits[x], "js", log_q, 0.2, None), has_aux=True
        )(theta)
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
        np.testing.assert_allclose(grad, grad_ref, rtol=1e-5, atol=1e-7)
        for k in aux_ref:
            np.testing.assert_allclose(aux[k], aux_ref[k], rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pseudo_reward_with_and_without_jit(self):
        log_u = jnp.linspace(-80.0, 80.0, 33)
        for divergence in DIVERGENCES:
            got = self.variant(lambda a, b: pseudo_reward(a, b, divergence))(log_u, jnp.zeros(33))
            np.testing.assert_array_equal(got, pseudo_reward(log_u, jnp.zeros(33), divergence))


# ----------------------------------------------------------------------------------------------
# The running states.


def test_running_normalizer_converges_to_log_z_and_jits():
    target_logits, _, proposal_logits = _problem()
    log_q_all = jax.nn.log_softmax(proposal_logits)

    @jax.jit
    def update(state, key):
        x = jax.random.categorical(key, proposal_logits, shape=(10_000,))
        return state.update(target_logits[x] + 100.0, log_q_all[x])

    state = RunningNormalizer.create()
    assert float(state.log_normalizer) == -np.inf
    for key in jax.random.split(jax.random.key(5), 10):
        state = update(state, key)
    assert float(state.count) == 100_000
    np.testing.assert_allclose(
        state.log_normalizer, jax.nn.logsumexp(target_logits) + 100.0, atol=5e-3
    )
    # Masked samples do not count.
    one = RunningNormalizer.create().update(
        jnp.array([0.0, 50.0]), jnp.zeros(2), where=jnp.array([True, False])
    )
    assert float(one.count) == 1.0 and float(one.log_normalizer) == 0.0


def test_moving_baselines_match_references_and_jit():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, size=7).astype(np.float32) for i in range(6)]
    ema = MovingBaseline.ema(0.8)
    window = MovingBaseline.windowed(10)
    assert float(ema.value) == 0.0 and float(window.value) == 0.0
    step = jax.jit(lambda b, r: b.update(r))
    for rewards in batches:
        ema, window = step(ema, rewards), step(window, rewards)
    acc = 0.0
    for rewards in batches:
        acc = 0.8 * acc + 0.2 * rewards.mean()
    np.testing.assert_allclose(ema.value, acc / (1 - 0.8 ** len(batches)), rtol=1e-6)
    np.testing.assert_allclose(window.value, np.concatenate(batches)[-10:].mean(), rtol=1e-6)
    # One EMA update is the batch mean; a batch longer than the window keeps its last rewards.
    np.testing.assert_allclose(
        MovingBaseline.ema(0.99).update(batches[0]).value, batches[0].mean(), rtol=1e-6
    )
    np.testing.assert_allclose(
        MovingBaseline.windowed(3).update(batches[1]).value, batches[1][-3:].mean(), rtol=1e-6
    )
    assert jax.tree_util.tree_structure(ema) == jax.tree_util.tree_structure(
        MovingBaseline.ema(0.8)
    )


def test_full_update_jits():
    target_logits, theta, _ = _problem()

    @jax.jit
    def train_step(theta, normalizer, baseline, key):
        x = jax.random.categorical(key, theta, shape=(256,))
        log_target = target_logits[x]
        normalizer = normalizer.update(log_target, jax.nn.log_softmax(theta)[x])
        grad, aux = jax.grad(
            lambda t: _batch_loss(
                t, x, log_target, "js", None, baseline.value, normalizer.log_normalizer
            ),
            has_aux=True,
        )(theta)
        rewards = policy.pseudo_reward(
            log_target - normalizer.log_normalizer, jax.nn.log_softmax(theta)[x], "js"
        )
        return theta - 2.0 * grad, normalizer, baseline.update(rewards), aux

    normalizer, baseline = RunningNormalizer.create(), MovingBaseline.windowed(1024)
    start = fdiv.categorical_divergence(target_logits, theta, "js")
    for key in jax.random.split(jax.random.key(6), 100):
        theta, normalizer, baseline, _ = train_step(theta, normalizer, baseline, key)
    end = fdiv.categorical_divergence(target_logits, theta, "js")
    assert float(end) < 0.3 * float(start)
    assert int(baseline.count) == 100 * 256


# ----------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fdpg_loss(jnp.zeros(3), jnp.zeros(3), "not_a_divergence"), "divergence"),
        (
            lambda: fdpg_loss(jnp.zeros(3, jnp.int32), jnp.zeros(3), "js"),
            "log_model must be floating",
        ),
        (
            lambda: fdpg_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), "js"),
            r"log_model must have shape \[n\]",
        ),
        (lambda: fdpg_loss(jnp.zeros(3), jnp.zeros(4), "js"), "log_target must have the shape"),
        (lambda: fdpg_loss(jnp.zeros(0), jnp.zeros(0), "js"), "empty"),
        (
            lambda: fdpg_loss(jnp.zeros(3), jnp.zeros(3), "js", log_proposal=jnp.zeros(2)),
            "log_proposal must have the shape",
        ),
        (
            lambda: fdpg_loss(jnp.zeros(3), jnp.zeros(3), "js", baseline=jnp.zeros(3)),
            "baseline must be a scalar",
        ),
        (
            lambda: fdpg_loss(jnp.zeros(3), jnp.zeros(3), "js", baseline=float("nan")),
            "baseline is NaN",
        ),
        (
            lambda: fdpg_loss(jnp.zeros(3), jnp.zeros(3), "js", log_normalizer="1"),
            "log_normalizer must be a scalar",
        ),
        (lambda: pseudo_reward(jnp.zeros(3), jnp.zeros(2), "js"), "must broadcast"),
        (lambda: pseudo_reward("a", jnp.zeros(2), "js"), "log_target must be an array"),
        (lambda: MovingBaseline.ema(1.0), "decay must be"),
        (lambda: MovingBaseline.windowed(0), "window must be"),
        (lambda: MovingBaseline.ema().update(jnp.zeros(0)), "rewards is empty"),
        (lambda: RunningNormalizer.create().update(jnp.zeros(3), jnp.zeros(2)), "log_sampler"),
        (
            lambda: RunningNormalizer.create().update(
                jnp.zeros(2), jnp.zeros(2), where=jnp.ones(2)
            ),
            "where must be a boolean mask",
        ),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
