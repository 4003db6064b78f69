"""Fused large-vocabulary divergence: ``D(softmax(h_t W_t) || softmax(h_s W_s))`` by token chunks.

Public through :func:`fdiv.kd.fused_linear_divergence`; see its docstring. This module also holds
the divergence resolver shared by every loss in :mod:`fdiv.kd`.

Why the structure is what it is (after levanter's blockwise cross-entropy, MaxText's vocabulary
tiling and Liger's fused linear losses):

* The unit of work is a chunk of ``chunk_size`` tokens with the *whole* vocabulary. A divergence
  between two distributions needs both normalisers and, for most divergences, elementwise terms
  of both log-probabilities at once, so chunking over tokens (not over the vocabulary, as an
  online-logsumexp cross-entropy may) keeps every divergence exact with one pass per chunk.
* ``jax.custom_vjp``: the forward pass stores only its inputs; the backward pass recomputes each
  chunk's logits with the same matmul and applies ``jax.vjp`` of the per-row categorical
  divergence inside the chunk, so the largest live intermediate is ``O(chunk_size x vocab)``
  in both passes. The head gradients are accumulated in a float32 carry.
* Matmuls take the inputs' dtype and accumulate in float32 (``preferred_element_type``); for
  bfloat16 inputs the products are exact in float32, so the logits equal float32 logits of the
  same (bfloat16) numbers up to summation order. The backward matmuls multiply the float32
  logit gradients by float32 copies of the heads. Only the returned gradients are rounded to
  the inputs' dtype (a ``custom_vjp`` must return cotangents of the primal dtype).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _checks
from fdiv import discrete as _discrete
from fdiv import divergences as _divergences

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Divergences that are not f-divergences, by name; each has the signature
# ``fn(target_logits, model_logits, *, temperature, where)`` and reduces the last axis.
NON_F_DIVERGENCES: dict[str, Callable[..., Array]] = {
    "skew_kl": _discrete.skew_kl,
    "skew_reverse_kl": _discrete.skew_reverse_kl,
    "generalized_jsd": _discrete.generalized_jsd,
    "cauchy_schwarz": _discrete.cauchy_schwarz,
}

DivergenceSpec = Union[str, "_divergences.FDivergence", Callable[..., Array]]


def resolve_divergence(divergence: DivergenceSpec) -> Callable[..., Array]:
    """Returns ``fn(target_logits, model_logits, *, temperature, where)``, per position.

    ``divergence`` is a registered f-divergence name or alias (``fdiv.divergences.names()``),
    an :class:`~fdiv.divergences.FDivergence`, one of the names ``"skew_kl"``,
    ``"skew_reverse_kl"``, ``"generalized_jsd"``, ``"cauchy_schwarz"`` (the functions of
    :mod:`fdiv.discrete` at their default parameters), or a callable with that signature, e.g.
    ``functools.partial(fdiv.discrete.generalized_jsd, beta=0.9)``.
    """
    if isinstance(divergence, _divergences.FDivergence):
        return functools.partial(_discrete.categorical_divergence, divergence=divergence)
    if isinstance(divergence, str):
        if divergence in NON_F_DIVERGENCES:
            return NON_F_DIVERGENCES[divergence]
        try:
            resolved = _divergences.get(divergence)
        except ValueError as e:
            raise ValueError(
                f"{e} Non-f divergences: {', '.join(NON_F_DIVERGENCES)}; for other parameters"
                " pass functools.partial(fdiv.discrete.skew_kl, alpha=...) or"
                " fdiv.divergences.get(name, **params)."
            ) from None
        return functools.partial(_discrete.categorical_divergence, divergence=resolved)
    if callable(divergence):
        return divergence
    raise ValueError(
        "divergence must be a registered name, an FDivergence or a callable"
        " fn(target_logits, model_logits, *, temperature, where), got"
        f" {type(divergence).__name__}."
    )


def _matmul(hidden, head):
    # Products of bfloat16 numbers are exact in float32: accumulating in float32 gives float32
    # logits of the bfloat16 inputs.
    return jnp.dot(hidden, head, preferred_element_type=jnp.float32)


def _row_divergence(div_fn, temperature, student_logits, teacher_logits):
    return div_fn(teacher_logits, student_logits, temperature=temperature, where=None)


def _teacher_chunk(teacher_hidden_chunk, teacher_head):
    if teacher_head is None:  # the chunk is teacher logits (or integer labels) given directly
        if jnp.issubdtype(teacher_hidden_chunk.dtype, jnp.integer):
            return teacher_hidden_chunk
        return teacher_hidden_chunk.astype(jnp.float32)
    return _matmul(teacher_hidden_chunk, teacher_head)


def _cross_entropy_rows(labels, student_logits, *, temperature, where):
    """``-log softmax(z / tau)[y]`` per row; the "teacher" is the integer label."""
    del where
    z = student_logits / temperature
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = top[..., 0] + jnp.log(jnp.sum(jnp.exp(z - top), axis=-1))
    return lse - jnp.take_along_axis(z, labels[..., None], axis=-1)[..., 0]


def _chunks(x, chunk_size):
    return x.reshape((x.shape[0] // chunk_size, chunk_size) + x.shape[1:])


def _values(div_fn, chunk_size, s_hidden, s_head, t_hidden, t_head, temperature):
    def body(_, xs):
        s_chunk, t_chunk = xs
        value = _row_divergence(
            div_fn, temperature, _matmul(s_chunk, s_head), _teacher_chunk(t_chunk, t_head)
        )
        return None, value.astype(jnp.float32)

    _, values = jax.lax.scan(
        body, None, (_chunks(s_hidden, chunk_size), _chunks(t_hidden, chunk_size))
    )
    return values.reshape(-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(div_fn, chunk_size, train_teacher, s_hidden, s_head, t_hidden, t_head, temperature):
    return _values(div_fn, chunk_size, s_hidden, s_head, t_hidden, t_head, temperature)


def _logit_grads(div_fn, temperature, train_teacher, s_logits, t_logits, g_chunk):
    """Value and cotangents of the per-row divergence w.r.t. both logit chunks (float32)."""
    if train_teacher:
        value, vjp = jax.vjp(
            functools.partial(_row_divergence, div_fn, temperature), s_logits, t_logits
        )
        d_s, d_t = vjp(g_chunk)
        return value, d_s.astype(jnp.float32), d_t.astype(jnp.float32)
    value, vjp = jax.vjp(lambda s: _row_divergence(div_fn, temperature, s, t_logits), s_logits)
    (d_s,) = vjp(g_chunk)
    return value, d_s.astype(jnp.float32), None


def _fast_path(train_teacher, t_head):
    # Teacher logits given directly and trained would need their [tokens, vocab] gradient kept.
    return t_head is not None or not train_teacher


def _fused_fwd(div_fn, chunk_size, train_teacher, s_hidden, s_head, t_hidden, t_head, temperature):
    """Forward pass under differentiation; also the gradients for a unit cotangent.

    The hidden-state gradient of a row is linear in that row's cotangent, so
    ``J_r W^T`` (``[tokens, d]``) is kept and scaled in the backward pass: exact for any
    cotangent. The head gradient ``sum_r g_r h_r^T J_r`` is kept for ``g = 1``; the backward
    pass uses it when the cotangent is one constant over the rows that contribute (a mean, also
    a masked one), and otherwise recomputes the chunks. So a mean loss costs the naive
    computation's four matmuls instead of six.
    """
    residuals = (s_hidden, s_head, t_hidden, t_head, temperature)
    if not _fast_path(train_teacher, t_head):
        return (
            _values(div_fn, chunk_size, s_hidden, s_head, t_hidden, t_head, temperature),
            (residuals, None),
        )
    f32 = jnp.float32
    s_head32 = s_head.astype(f32)
    teach = train_teacher  # with a head (fast path)
    t_head32 = t_head.astype(f32) if teach else None

    def body(carry, xs):
        d_s_head, d_t_head = carry
        s_chunk, t_chunk = xs
        s_logits = _matmul(s_chunk, s_head)
        t_logits = _teacher_chunk(t_chunk, t_head)
        ones = jnp.ones(s_chunk.shape[:1], f32)
        value, j_s, j_t = _logit_grads(div_fn, temperature, teach, s_logits, t_logits, ones)
        a_s = jnp.dot(j_s, s_head32.T)
        d_s_head = d_s_head + jnp.dot(s_chunk.astype(f32).T, j_s)
        if teach:
            a_t = jnp.dot(j_t, t_head32.T)
            d_t_head = d_t_head + jnp.dot(t_chunk.astype(f32).T, j_t)
        else:
            a_t = jnp.zeros((), f32)
        return (d_s_head, d_t_head), (value.astype(f32), a_s, a_t)

    init_t = jnp.zeros(t_head.shape, f32) if teach else jnp.zeros((), f32)
    (d_s_head, d_t_head), (values, a_s, a_t) = jax.lax.scan(
        body,
        (jnp.zeros(s_head.shape, f32), init_t),
        (_chunks(s_hidden, chunk_size), _chunks(t_hidden, chunk_size)),
    )
    unit = (
        a_s.reshape(s_hidden.shape),
        d_s_head,
        a_t.reshape(t_hidden.shape) if teach else None,
        d_t_head if teach else None,
    )
    return values.reshape(-1), (residuals, unit)


def _recompute_head_grads(div_fn, chunk_size, train_teacher, residuals, cotangent, hidden_grads):
    """Backward pass by chunks: head gradients, and hidden gradients if ``hidden_grads``."""
    s_hidden, s_head, t_hidden, t_head, temperature = residuals
    f32 = jnp.float32
    s_head32 = s_head.astype(f32) if hidden_grads else None
    teacher_has_head = t_head is not None
    t_head32 = t_head.astype(f32) if (hidden_grads and train_teacher and teacher_has_head) else None

    def body(carry, xs):
        d_s_head, d_t_head = carry
        s_chunk, t_chunk, g_chunk = xs
        s_logits = _matmul(s_chunk, s_head)
        t_logits = _teacher_chunk(t_chunk, t_head)
        _, d_s_logits, d_t_logits = _logit_grads(
            div_fn, temperature, train_teacher, s_logits, t_logits, g_chunk
        )
        d_s_head = d_s_head + jnp.dot(s_chunk.astype(f32).T, d_s_logits)
        d_s_chunk = jnp.dot(d_s_logits, s_head32.T) if hidden_grads else jnp.zeros((), f32)
        d_t_chunk = jnp.zeros((), f32)
        if train_teacher and teacher_has_head:
            d_t_head = d_t_head + jnp.dot(t_chunk.astype(f32).T, d_t_logits)
            if hidden_grads:
                d_t_chunk = jnp.dot(d_t_logits, t_head32.T)
        elif train_teacher and hidden_grads:
            d_t_chunk = d_t_logits
        return (d_s_head, d_t_head), (d_s_chunk, d_t_chunk)

    init_t = (
        jnp.zeros(t_head.shape, f32) if (train_teacher and teacher_has_head) else jnp.zeros((), f32)
    )
    (d_s_head, d_t_head), (d_s_hidden, d_t_hidden) = jax.lax.scan(
        body,
        (jnp.zeros(s_head.shape, f32), init_t),
        (
            _chunks(s_hidden, chunk_size),
            _chunks(t_hidden, chunk_size),
            _chunks(cotangent, chunk_size),
        ),
    )
    return d_s_head, d_t_head, d_s_hidden, d_t_hidden


def _fused_bwd(div_fn, chunk_size, train_teacher, saved, cotangent):
    residuals, unit = saved
    s_hidden, s_head, t_hidden, t_head, temperature = residuals
    f32 = jnp.float32
    g = cotangent.astype(f32)
    teacher_has_head = t_head is not None
    if unit is None:
        d_s_head, d_t_head, d_s_hidden, d_t_hidden = _recompute_head_grads(
            div_fn, chunk_size, train_teacher, residuals, g, hidden_grads=True
        )
        d_s_hidden = d_s_hidden.reshape(s_hidden.shape)
        if train_teacher:
            d_t_hidden = d_t_hidden.reshape(t_hidden.shape)
    else:
        a_s, unit_s_head, a_t, unit_t_head = unit
        d_s_hidden = g[:, None] * a_s
        d_t_hidden = g[:, None] * a_t if train_teacher else None
        # Rows with zero hidden states (masked or padding) add nothing to the head gradients,
        # so only the other rows' cotangents need to be equal.
        used = jnp.any(s_hidden != 0, axis=1)
        if train_teacher:
            used = used | jnp.any(t_hidden != 0, axis=1)
        top = jnp.max(jnp.where(used, g, -jnp.inf))
        low = jnp.min(jnp.where(used, g, jnp.inf))
        constant = (top == low) | ~jnp.any(used)
        scale = jnp.where(jnp.any(used), top, 0.0)

        def from_unit():
            return scale * unit_s_head, (
                scale * unit_t_head if train_teacher else jnp.zeros((), f32)
            )

        def recompute():
            d_s, d_t, _, _ = _recompute_head_grads(
                div_fn, chunk_size, train_teacher, residuals, g, hidden_grads=False
            )
            return d_s, d_t

        d_s_head, d_t_head = jax.lax.cond(constant, from_unit, recompute)

    d_s_hidden = d_s_hidden.astype(s_hidden.dtype)
    if jnp.issubdtype(t_hidden.dtype, jnp.integer):
        d_t_hidden = np.zeros(t_hidden.shape, jax.dtypes.float0)
    elif train_teacher:
        d_t_hidden = d_t_hidden.astype(t_hidden.dtype)
    else:
        d_t_hidden = jnp.zeros(t_hidden.shape, t_hidden.dtype)
    if not teacher_has_head:
        d_t_head = None
    elif train_teacher:
        d_t_head = d_t_head.astype(t_head.dtype)
    else:
        d_t_head = jnp.zeros(t_head.shape, t_head.dtype)
    return (
        d_s_hidden,
        d_s_head.astype(s_head.dtype),
        d_t_hidden,
        d_t_head,
        jnp.zeros_like(temperature),
    )


_fused.defvjp(_fused_fwd, _fused_bwd)


def _check_float(x, name):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be floating point, got {x.dtype}; cast with"
            " .astype(jnp.float32) or jnp.bfloat16."
        )
    return x


def fused_linear_divergence(
    student_hidden: ArrayLike,
    student_head: ArrayLike,
    teacher_hidden: ArrayLike | None,
    teacher_head: ArrayLike | None,
    divergence: DivergenceSpec,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    teacher_logits: ArrayLike | None = None,
    train_teacher: bool = False,
    trim_teacher_vocab: bool = False,
) -> Array:
    r"""Token-level divergence of ``softmax(hidden @ head)``, never materialising the logits.

    Equals ``fdiv.kd.divergence_loss(teacher_hidden @ teacher_head, student_hidden @
    student_head, divergence, temperature=temperature, where=where)``, i.e.
    ``tau^2 D(P_t || Q_s)`` per token with ``P`` the teacher (target) and ``Q`` the student
    (model) at temperature ``tau`` (``docs/reference.md`` sections 1, 3 and 7), in value and
    gradients, while the ``[tokens, vocab]`` logits exist only ``chunk_size`` rows at a time in
    the forward and the backward pass (a ``lax.scan`` over token chunks and a custom VJP that
    recomputes each chunk's logits). Memory is ``O(chunk_size x vocab + hidden x vocab)``
    instead of ``O(tokens x vocab)``.

    Cost: under differentiation the forward pass also forms the gradients for a unit cotangent
    (the hidden-state part is exact for any cotangent, being linear in it row by row). When the
    cotangent is one constant over the tokens that contribute, as for ``fdiv.kd.reduce`` of the
    result (masked or not, provided the mask is passed as ``where``), the backward pass only
    scales them: the same four ``[tokens, d] x [d, vocab]`` matmuls as the naive computation.
    Any other cotangent recomputes the chunks for the head gradients (two more logit matmuls and
    one head-gradient matmul).

    Args:
      student_hidden: ``[..., d_s]`` final hidden states of the student, floating point
        (bfloat16 is fine: matmuls accumulate in float32).
      student_head: ``[d_s, vocab]`` output projection, ``logits = hidden @ head``.
      teacher_hidden: ``[..., d_t]`` teacher hidden states with the same leading shape; ``None``
        when ``teacher_logits`` is given.
      teacher_head: ``[d_t, vocab_t]``; ``None`` when ``teacher_logits`` is given.
      divergence: any divergence accepted by :func:`fdiv.kd.divergence_loss`: a registered
        f-divergence name or ``FDivergence``, ``"skew_kl"``, ``"skew_reverse_kl"``,
        ``"generalized_jsd"``, ``"cauchy_schwarz"``, or a callable with the signature of
        :func:`fdiv.discrete.skew_kl` (e.g. a ``functools.partial`` of it).
      chunk_size: tokens per chunk (a positive int; need not divide the token count: the last
        chunk is padded with masked rows). Peak memory grows linearly with it.
      temperature: softmax temperature for both sides; the result is multiplied by
        ``temperature**2`` as every loss in :mod:`fdiv.kd`. A positive Python number.
      where: optional boolean mask of the leading shape; masked tokens give exactly ``0`` and
        zero gradients, whatever their hidden states contain.
      teacher_logits: optional ``[..., vocab]`` teacher logits used instead of
        ``teacher_hidden @ teacher_head`` (offline or already computed teachers); only the
        student side is then fused.
      train_teacher: when ``False`` (default) the teacher is a constant: its gradients are
        zeros and cost nothing. ``True`` also returns exact gradients for the teacher's hidden
        states and head (or for ``teacher_logits``), for online/mutual distillation.
      trim_teacher_vocab: drop the teacher's columns beyond the student's vocabulary (padding
        of a vocabulary rounded up for the hardware); otherwise differing vocabularies raise.

    Returns:
      ``float32`` loss per token, shape ``student_hidden.shape[:-1]`` (no reduction; use
      :func:`fdiv.kd.reduce`).

    Raises:
      ValueError: mismatched shapes or vocabularies, non-floating inputs, a non-positive
        ``chunk_size`` or ``temperature``, a bad ``where``, an unknown divergence.

    References:
      levanter ``src/levanter/models/loss.py`` (blockwise cross-entropy with a custom VJP);
      Wijmans et al., `Cut Your Losses in Large-Vocabulary Language Models
      <https://arxiv.org/abs/2411.09009>`_, 2024; Hsu et al., `Liger Kernel
      <https://arxiv.org/abs/2410.10989>`_, 2024 (fused linear losses).
    """
    div_fn = resolve_divergence(divergence)
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or (chunk_size <= 0)
    ):
        raise ValueError(
            f"chunk_size must be a positive int, got {chunk_size!r}; 1024 is"
            " a good start, lower it to save memory."
        )
    if not isinstance(temperature, numbers.Real) or not float(temperature) > 0:
        raise ValueError(f"temperature must be a positive Python number, got {temperature!r}.")
    student_hidden = _check_float(student_hidden, "student_hidden")
    student_head = _check_float(student_head, "student_head")
    if (
        student_hidden.ndim < 1
        or student_head.ndim != 2
        or (student_head.shape[0] != student_hidden.shape[-1])
    ):
        raise ValueError(
            "student_hidden must be [..., d] and student_head [d, vocab], got"
            f" student_hidden.shape={student_hidden.shape},"
            f" student_head.shape={student_head.shape}."
        )
    lead = student_hidden.shape[:-1]
    vocab = student_head.shape[1]

    if teacher_logits is not None:
        if teacher_hidden is not None or teacher_head is not None:
            raise ValueError(
                "pass either teacher_logits or (teacher_hidden, teacher_head),"
                " not both; set the others to None."
            )
        t_hidden = _check_float(teacher_logits, "teacher_logits")
        t_head = None
        t_vocab = t_hidden.shape[-1] if t_hidden.ndim else None
        t_lead = t_hidden.shape[:-1]
        t_name = f"teacher_logits.shape={t_hidden.shape}"
    else:
        if teacher_hidden is None or teacher_head is None:
            raise ValueError(
                "teacher_hidden and teacher_head are both required unless teacher_logits is given."
            )
        t_hidden = _check_float(teacher_hidden, "teacher_hidden")
        t_head = _check_float(teacher_head, "teacher_head")
        if t_head.ndim != 2 or t_hidden.ndim < 1 or t_head.shape[0] != t_hidden.shape[-1]:
            raise ValueError(
                "teacher_hidden must be [..., d_t] and teacher_head [d_t, vocab], got"
                f" teacher_hidden.shape={t_hidden.shape}, teacher_head.shape={t_head.shape}."
            )
        t_vocab = t_head.shape[1]
        t_lead = t_hidden.shape[:-1]
        t_name = f"teacher_head.shape={t_head.shape}"
    if t_lead != lead:
        raise ValueError(
            f"teacher and student must have the same token shape, got {t_lead} (teacher) and"
            f" {lead} (student_hidden.shape={student_hidden.shape})."
        )
    if t_vocab != vocab:
        if trim_teacher_vocab and t_vocab > vocab:
            if t_head is None:
                t_hidden = t_hidden[..., :vocab]
            else:
                t_head = t_head[:, :vocab]
        else:
            raise ValueError(
                vocab_mismatch_message(
                    t_vocab, vocab, t_name, f"student_head.shape={student_head.shape}"
                )
            )

    n = int(np.prod(lead, dtype=np.int64))
    s_flat = student_hidden.reshape(n, student_hidden.shape[-1])
    t_flat = t_hidden.reshape(n, t_hidden.shape[-1])
    if where is not None:
        mask = _checks.check_mask(where, lead, f"the token shape {lead}")
        mask = jnp.broadcast_to(mask, lead).reshape(n)
        # Zeroing the rows (not only the outputs) keeps NaN/inf in masked tokens out of the head
        # gradients, which sum over tokens.
        s_flat = jnp.where(mask[:, None], s_flat, jnp.zeros((), s_flat.dtype))
        t_flat = jnp.where(mask[:, None], t_flat, jnp.zeros((), t_flat.dtype))
    chunk = min(int(chunk_size), max(n, 1))
    padded = -(-n // chunk) * chunk
    if padded != n:
        s_flat = jnp.pad(s_flat, ((0, padded - n), (0, 0)))
        t_flat = jnp.pad(t_flat, ((0, padded - n), (0, 0)))
    tau = float(temperature)
    values = _fused(
        div_fn,
        chunk,
        bool(train_teacher),
        s_flat,
        student_head,
        t_flat,
        t_head,
        jnp.asarray(tau, jnp.float32),
    )
    values = values[:n].reshape(lead) * jnp.float32(tau * tau)
    if where is not None:
        values = jnp.where(mask.reshape(lead), values, jnp.zeros((), values.dtype))
    return values


def vocab_mismatch_message(teacher_vocab, student_vocab, teacher_what, student_what):
    hint = (
        f"if the teacher's last {teacher_vocab - student_vocab} columns are padding (a"
        " vocabulary rounded up for the hardware), pass trim_teacher_vocab=True to drop"
        " them"
        if teacher_vocab > student_vocab
        else "map both models to one shared vocabulary first"
    )
    return (
        f"teacher vocabulary size {teacher_vocab} differs from student vocabulary size"
        f" {student_vocab} ({teacher_what}, {student_what}); {hint}."
    )


def fused_linear_cross_entropy(
    hidden: ArrayLike,
    head: ArrayLike,
    labels: ArrayLike,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
) -> Array:
    """Cross-entropy ``-log softmax(hidden @ head / tau)[label]`` per token, by token chunks.

    The label-only member of :func:`fused_linear_divergence` (forward KL against a one-hot
    teacher, without materialising the one-hot teacher or the logits); same chunking, custom
    VJP, float32 accumulation and masking. Not multiplied by ``tau**2`` (it is a label loss).

    Args:
      hidden: ``[..., d]`` hidden states; head: ``[d, vocab]``.
      labels: ``[...]`` integer labels in ``[0, vocab)`` (not checked under tracing).
      chunk_size, where: as in :func:`fused_linear_divergence`; mask ``ignore_index`` labels
        with ``where=fdiv.kd.mask_from_labels(labels)``.

    Returns:
      ``[...]`` float32 losses.
    """
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or (chunk_size <= 0)
    ):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if not isinstance(temperature, numbers.Real) or not float(temperature) > 0:
        raise ValueError(f"temperature must be a positive Python number, got {temperature!r}.")
    hidden = _check_float(hidden, "hidden")
    head = _check_float(head, "head")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}.")
    if (
        head.ndim != 2
        or hidden.ndim < 1
        or head.shape[0] != hidden.shape[-1]
        or (labels.shape != hidden.shape[:-1])
    ):
        raise ValueError(
            "hidden must be [..., d], head [d, vocab] and labels [...], got"
            f" hidden.shape={hidden.shape}, head.shape={head.shape},"
            f" labels.shape={labels.shape}."
        )
    lead = hidden.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    flat = hidden.reshape(n, hidden.shape[-1])
    flat_labels = labels.reshape(n).astype(jnp.int32)
    if where is not None:
        mask = jnp.broadcast_to(
            _checks.check_mask(where, lead, f"the token shape {lead}"), lead
        ).reshape(n)
        flat = jnp.where(mask[:, None], flat, jnp.zeros((), flat.dtype))
        flat_labels = jnp.where(mask, flat_labels, 0)
    chunk = min(int(chunk_size), max(n, 1))
    padded = -(-n // chunk) * chunk
    if padded != n:
        flat = jnp.pad(flat, ((0, padded - n), (0, 0)))
        flat_labels = jnp.pad(flat_labels, (0, padded - n))
    values = _fused(
        _cross_entropy_rows,
        chunk,
        False,
        flat,
        head,
        flat_labels,
        None,
        jnp.asarray(float(temperature), jnp.float32),
    )
    values = values[:n].reshape(lead)
    if where is not None:
        values = jnp.where(mask.reshape(lead), values, jnp.zeros((), values.dtype))
    return values
