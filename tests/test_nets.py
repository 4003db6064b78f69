"""Tests for fdiv.nets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fdiv import diffusion, nets


def _randomize(module, seed=0, scale=0.3):
    """Replaces every parameter by random values so that zero-initialised layers are active.

    numpy draws the values: one jax.random call per parameter shape would compile a kernel
    for each shape outside jit.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(scale * rng.normal(size=l.shape), l.dtype) for l in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)


@functools.lru_cache(maxsize=None)
def _built_unet(channel_mult):
    # Built once per shape: eager parameter initialisation compiles a kernel per shape.
    return nets.UNet(1, base=8, channel_mult=channel_mult, emb_dim=16, rngs=nnx.Rngs(0))


def _small_unet(channel_mult=(1, 2)):
    """A private copy of a tiny U-Net (some tests replace its parameters)."""
    return nnx.clone(_built_unet(channel_mult))


def _jitted(module, **kw):
    graphdef, state = nnx.split(module)
    return jax.jit(lambda st, *a: nnx.merge(graphdef, st)(*a, **kw)), state


@pytest.mark.parametrize(
    "kind,shape", [("mlp", (5, 2)), ("unet", (3, 8, 8, 1)), ("unet3", (2, 28, 28, 1))]
)
def test_denoiser_shapes_and_initial_value(kind, shape):
    if kind == "mlp":
        net = nets.MLP(2, hidden=32, depth=2, rngs=nnx.Rngs(0))
        feat_dim = 32
    else:
        net = _small_unet((1, 2, 2) if kind == "unet3" else (1, 2))
        feat_dim = net.feature_dim
    sd = 0.5
    fn, state = _jitted(nets.EDMDenoiser(net, sd), return_features=True)
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    sigma = jnp.linspace(0.1, 5.0, shape[0])
    out, feats = fn(state, x, sigma)
    assert out.shape == shape and feats.shape == (shape[0], feat_dim)
    # Zero-initialised output layers: D = c_skip x, the optimal denoiser of N(0, sigma_data^2).
    cs = diffusion.c_skip(sigma, sd).reshape((-1,) + (1,) * (len(shape) - 1))
    np.testing.assert_allclose(out, cs * x, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_depends_on_sigma_and_differentiable(kind):
    if kind == "mlp":
        net, shape = nets.MLP(3, hidden=16, depth=1, rngs=nnx.Rngs(0)), (4, 3)
    else:
        net, shape = _small_unet(), (2, 8, 8, 1)
    d = _randomize(nets.EDMDenoiser(net, 1.0))
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    s1, s2 = jnp.full((shape[0],), 0.5), jnp.full((shape[0],), 0.7)
    graphdef, state = nnx.split(d)

    def apply(st, x, s):
        return nnx.merge(graphdef, st)(x, s)

    fn = jax.jit(apply)
    if kind == "mlp":  # eager agrees with jit (eager U-Net calls are slow to dispatch)
        np.testing.assert_allclose(fn(state, x, s1), d(x, s1), rtol=1e-4, atol=1e-5)

    # The raw output (beyond the skip term) changes with the noise level through c_noise.
    def raw(s):
        return (fn(state, x, s) - diffusion.c_skip(s[0], 1.0) * x) / diffusion.c_out(s[0], 1.0)

    assert not np.allclose(raw(s1), raw(s2), atol=1e-3)
    g = jax.jit(jax.grad(lambda x: jnp.sum(apply(state, x, s1) ** 2)))(x)
    assert g.shape == shape and np.all(np.isfinite(g)) and np.any(g != 0)


def test_one_step_generator_copies_teacher():
    teacher = _randomize(nets.EDMDenoiser(nets.MLP(2, hidden=16, depth=1, rngs=nnx.Rngs(0)), 1.4))
    smax = 20.0
    gen = nets.OneStepGenerator.from_teacher(teacher, smax)
    z = jax.random.normal(jax.random.PRNGKey(3), (6, 2))
    want = teacher(smax * z, jnp.full((6,), smax))
    np.testing.assert_allclose(gen(z), want, rtol=1e-6)
    # A copy, not shared parameters: changing the generator leaves the teacher intact.
    gen.denoiser.net.out.bias[...] = gen.denoiser.net.out.bias[...] + 1.0
    np.testing.assert_allclose(teacher(smax * z, jnp.full((6,), smax)), want, rtol=1e-6)
    assert not np.allclose(gen(z), want)
    # A lower input noise level with the latent scaled to the noised data's std.
    low = nets.OneStepGenerator.from_teacher(teacher, 0.5, latent_std=np.hypot(0.5, 1.4))
    np.testing.assert_allclose(
        low(z), teacher(np.hypot(0.5, 1.4) * z, jnp.full((6,), 0.5)), rtol=1e-6
    )
    with pytest.raises(ValueError, match="latent_std must be positive"):
        nets.OneStepGenerator.from_teacher(teacher, 0.5, latent_std=0.0)
    with pytest.raises(ValueError, match="sigma_max must be a positive"):
        nets.OneStepGenerator(teacher, float("nan"))


def test_discriminator_head():
    head = nets.DiscriminatorHead(10, hidden=16, rngs=nnx.Rngs(0))
    f = jax.random.normal(jax.random.PRNGKey(4), (7, 10))
    cn = jnp.linspace(-1, 1, 7)
    np.testing.assert_array_equal(head(f, cn), np.zeros(7))  # ratio 1 at init
    head = _randomize(head)
    logits = head(f, cn)
    assert logits.shape == (7,)
    assert not np.allclose(logits, head(f, cn + 0.5))
    with pytest.raises(ValueError, match=r"\[batch, 10\].*\(7, 9\)"):
        head(f[:, :9], cn)
    with pytest.raises(ValueError, match=r"\(7,\).*\(7, 10\).*\(6,\)"):
        head(f, cn[:6])


def test_input_errors():
    with pytest.raises(ValueError, match="divisible by 2"):
        _small_unet()(jnp.zeros((1, 7, 7, 1)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match=r"\[batch, 2\].*\(3, 4\)"):
        nets.MLP(2, rngs=nnx.Rngs(0))(jnp.zeros((3, 4)), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="even"):
        nets.fourier_embedding(jnp.zeros((2,)), 5)


def test_fourier_embedding_values():
    c = jnp.array([0.0, 0.3])
    e = nets.fourier_embedding(c, 6, max_freq=4.0)
    freqs = np.array([1.0, 2.0, 4.0])
    want = np.concatenate([np.cos(np.outer(c, freqs)), np.sin(np.outer(c, freqs))], axis=1)
    np.testing.assert_allclose(e, want, rtol=1e-6, atol=1e-7)
