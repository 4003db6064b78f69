"""Autoregressive sampling from a decoder with a KV cache, under ``jax.jit`` and ``lax.scan``.

`generate` prefills the cache with the prompt in one forward pass, then runs one cached
forward pass per new token inside a ``lax.scan``. Besides the tokens it returns each token's
log-probability under the distribution it was drawn from (temperature, top-k and top-p
applied: what on-policy distillation and f-DPG need as log q(y)) and under the untempered
model (the plain softmax of the logits).

`sampling_log_probs` is that sampling distribution as a pure function of logits, usable on
its own (e.g. to score a student's samples the way they were drawn).

Works with any NNX module ``model`` that has ``init_cache(batch, max_len)`` and
``model(tokens, cache=cache) -> (logits, cache)`` (e.g. `fdiv.nets.llama.Llama`).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


class Generation(NamedTuple):
    """Output of `generate` (a pytree).

    Attributes:
      tokens: int32 ``[batch, max_new_tokens]``, the new tokens (after the first ``eos_id``
        every token is ``eos_id``).
      logprobs: float32 ``[batch, max_new_tokens]``, log-probability of each token under the
        sampling distribution (0 for greedy decoding, where the choice is deterministic; 0
        after the first eos).
      model_logprobs: float32 ``[batch, max_new_tokens]``, log-probability under the untempered
        model, ``log_softmax(logits)[token]`` (0 after the first eos).
      mask: bool ``[batch, max_new_tokens]``, True up to and including the first ``eos_id``.
    """

    tokens: Array
    logprobs: Array
    model_logprobs: Array
    mask: Array


def sampling_log_probs(
    logits: Array, *, temperature: float | Array = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Array:
    """Log-probabilities ``[..., V]`` of the sampling distribution defined by `logits`.

    ``softmax(logits / temperature)`` restricted to the `top_k` largest logits (0: all), then
    to the smallest set of the most probable remaining tokens whose probability reaches
    `top_p` (nucleus sampling; 1: all), renormalised; excluded tokens get ``-inf``. This is
    the order of Hugging Face ``generate`` (temperature, top-k, top-p). ``temperature == 0``
    is greedy decoding: log-probability 0 at the argmax (the first one on ties) and ``-inf``
    elsewhere. Computed in float32.

    Args:
      logits: ``[..., V]``.
      temperature: >= 0, a Python number or a scalar array (then it may be traced).
      top_k: static int in ``[0, V]``.
      top_p: in ``(0, 1]``, a Python number or a scalar array (then it may be traced).
    """
    _check_sampling(temperature, top_k, top_p, logits.shape[-1])
    logits = jnp.asarray(logits, jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    scaled = logits / jnp.where(t > 0, t, 1.0)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        scaled = jnp.where(scaled >= kth, scaled, -jnp.inf)
    if isinstance(top_p, jax.core.Tracer) or top_p < 1.0:
        p = jnp.asarray(top_p, jnp.float32)
        desc = -jnp.sort(-scaled, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more probable tokens
        n_keep = jnp.sum(before < p, axis=-1, keepdims=True)  # >= 1
        threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
        # top_p == 1 keeps everything even where rounding puts `before` at 1.
        scaled = jnp.where((scaled >= threshold) | (p >= 1), scaled, -jnp.inf)
    logp = jax.nn.log_softmax(scaled, axis=-1)
    greedy = jnp.where(
        jnp.arange(logits.shape[-1]) == jnp.argmax(logits, -1)[..., None], 0.0, -jnp.inf
    )
    return jnp.where(t > 0, logp, greedy)


def _check_sampling(temperature, top_k, top_p, vocab_size):
    if not isinstance(temperature, jax.core.Tracer):
        t = np.asarray(temperature)
        if t.shape != () or not np.isfinite(t) or t < 0:
            raise ValueError(
                f"temperature must be a finite scalar >= 0 (0 = greedy), got {temperature!r}."
            )
    if not isinstance(top_k, (int, np.integer)) or not 0 <= top_k <= vocab_size:
        raise ValueError(
            f"top_k must be an int in [0, {vocab_size}] (0 = no top-k), got {top_k!r}."
        )
    if isinstance(top_p, jax.core.Tracer):
        return
    if np.asarray(top_p).shape != () or not 0 < float(top_p) <= 1:
        raise ValueError(f"top_p must be a number in (0, 1] (1 = no nucleus), got {top_p!r}.")


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k"))
def _generate(graphdef, state, prompt, temperature, top_p, eos_id, key, *, max_new_tokens, top_k):
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    cache = model.init_cache(b, p + max_new_tokens)
    logits, cache = model(prompt, cache=cache)

    def pick(last_logits, k):
        logp = sampling_log_probs(last_logits, temperature=temperature, top_k=top_k, top_p=top_p)
        tok = jax.random.categorical(k, logp, axis=-1).astype(jnp.int32)
        tok = jnp.where(temperature > 0, tok, jnp.argmax(last_logits, -1).astype(jnp.int32))
        lp = jnp.take_along_axis(logp, tok[:, None], -1)[:, 0]
        mlp = jnp.take_along_axis(
            jax.nn.log_softmax(last_logits.astype(jnp.float32), -1), tok[:, None], -1
        )[:, 0]
        return tok, lp, mlp

    def finish(tok, lp, mlp, done):  # eos_id < 0: no end-of-sequence token
        tok = jnp.where(done, eos_id, tok)
        lp, mlp = jnp.where(done, 0.0, lp), jnp.where(done, 0.0, mlp)
        return tok, lp, mlp, done | ((tok == eos_id) & (eos_id >= 0))

    keys = jax.random.split(key, max_new_tokens)
    done0 = jnp.zeros((b,), bool)
    tok, lp, mlp = pick(logits[:, -1], keys[0])
    tok, lp, mlp, done = finish(tok, lp, mlp, done0)
    first = (tok, lp, mlp, ~done0)

    def step(carry, k):
        tok, cache, done = carry
        logits, cache = model(tok[:, None], cache=cache)
        new_tok, lp, mlp = pick(logits[:, 0], k)
        new_tok, lp, mlp, new_done = finish(new_tok, lp, mlp, done)
        return (new_tok, cache, new_done), (new_tok, lp, mlp, ~done)

    _, rest = jax.lax.scan(step, (tok, cache, done), keys[1:])
    out = [jnp.concatenate([f[:, None], r.T], axis=1) for f, r in zip(first, rest)]
    return Generation(*out)


def generate(
    model: nnx.Module,
    prompt_tokens: Array,
    *,
    max_new_tokens: int,
    temperature: float | Array = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    key: Array,
    eos_id: int | None = None,
) -> Generation:
    """Samples `max_new_tokens` tokens after `prompt_tokens` with a KV cache.

    The whole loop is one jitted program (prefill, then ``lax.scan`` over steps); it is
    compiled once per (model structure, prompt shape, max_new_tokens, top_k); `temperature`,
    `top_p` and `eos_id` are traced values, so changing them does not recompile.

    Args:
      model: a decoder with ``init_cache`` and ``__call__(tokens, cache=)`` (e.g. `Llama`).
      prompt_tokens: int ``[batch, prompt_len]`` (every row has the same length; prompt_len >= 1).
      max_new_tokens: number of tokens to generate (>= 1).
      temperature: >= 0; 0 is greedy decoding.
      top_k: keep the k most likely tokens (0: no top-k).
      top_p: nucleus mass in (0, 1] (1: no nucleus).
      key: a JAX PRNG key.
      eos_id: optional end-of-sequence id: after it a row emits only `eos_id` with
        log-probabilities 0, and ``mask`` is False.

    Returns:
      `Generation` (tokens, logprobs under the sampling distribution, logprobs under the
      untempered model, mask).
    """
    prompt_tokens = jnp.asarray(prompt_tokens)
    if (
        prompt_tokens.ndim != 2
        or prompt_tokens.shape[1] < 1
        or not jnp.issubdtype(prompt_tokens.dtype, jnp.integer)
    ):
        raise ValueError(
            f"generate: prompt_tokens must be an integer array [batch, len >= 1], "
            f"got dtype {prompt_tokens.dtype} and shape {prompt_tokens.shape}."
        )
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an int >= 1, got {max_new_tokens!r}.")
    vocab = getattr(getattr(model, "config", None), "vocab_size", math.inf)
    _check_sampling(temperature, top_k, top_p, vocab)
    if eos_id is not None and not 0 <= eos_id < vocab:
        raise ValueError(f"generate: eos_id must lie in [0, {vocab}), got {eos_id}.")
    if not isinstance(prompt_tokens, jax.core.Tracer):
        lo, hi = int(prompt_tokens.min()), int(prompt_tokens.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"generate: prompt token ids must lie in [0, {vocab}), got [{lo}, {hi}]."
            )
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        prompt_tokens.astype(jnp.int32),
        jnp.asarray(temperature, jnp.float32),
        jnp.asarray(top_p, jnp.float32),
        jnp.asarray(-1 if eos_id is None else eos_id, jnp.int32),
        key,
        max_new_tokens=int(max_new_tokens),
        top_k=int(top_k),
    )
