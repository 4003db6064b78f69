"""Knowledge-distillation losses for classifiers and language models.

Convention (``docs/reference.md`` section 1): ``P`` is the teacher (target) and ``Q`` the student
(model); "forward KL" is ``KL(teacher || student)``. Every function takes ``teacher_logits`` and
``student_logits`` with the classes on the last axis and returns **one loss per position** (the
logits' shape without the last axis): there is no hidden mean. Average over real tokens with
:func:`reduce`.

Shared conventions:

* **Temperature.** Both sides are softmaxed at ``temperature`` and every distillation term is
  multiplied by ``temperature**2`` (Hinton et al.), so that its gradient scale does not shrink
  with the temperature; at ``temperature=1`` nothing changes. NKD's target term is at
  temperature 1 as in its authors' code (section 7).
* **Masks.** ``where`` (boolean, the output shape) marks real positions; masked positions give
  exactly ``0`` and zero gradients whatever their logits hold (NaN included). From labels
  with an ``ignore_index`` use :func:`mask_from_labels`; :func:`nkd_loss` takes ``ignore_index``.
* **Soft-capping.** ``softcap=c`` replaces logits ``z`` by ``c tanh(z / c)`` on *both* sides
  before the temperature (Gemma 2's final-logit capping); ``-inf`` logits (impossible classes)
  stay ``-inf``.
* **Vocabularies.** Teacher and student must have the same number of classes; a teacher whose
  vocabulary is padded beyond the student's can be trimmed with ``trim_teacher_vocab=True``
  (the dropped columns' mass is removed and the teacher renormalised over the shared classes).
* **Numerics.** Built on :mod:`fdiv.discrete` (``categorical_divergence`` and the skew/GKD
  divergences): log space throughout, finite values and gradients for logits of ``+-1e4``,
  ``-inf`` logits for zero probabilities (the divergence's limits, ``+inf`` only where the true
  value is infinite), float32 results for bfloat16 inputs.
* **Teacher gradients.** Gradients flow into ``teacher_logits`` (online and mutual distillation
  use them); wrap the teacher in ``jax.lax.stop_gradient`` for a frozen teacher.

The fused large-vocabulary loss :func:`fused_linear_divergence` computes the same per-token
values from hidden states and output heads without materialising the logits.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _checks
from fdiv import discrete as _discrete
from fdiv._fused import (
    NON_F_DIVERGENCES,
    fused_linear_cross_entropy,
    fused_linear_divergence,
    resolve_divergence,
    vocab_mismatch_message,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "NON_F_DIVERGENCES",
    "bdkd_loss",
    "divergence_loss",
    "entropy_balance_weight",
    "fused_linear_cross_entropy",
    "fused_linear_divergence",
    "kd_loss",
    "mask_from_labels",
    "nkd_loss",
    "reduce",
    "resolve_divergence",
    "sinkd_loss",
    "teacher_topk",
    "topk_divergence_loss",
]

# SinKD's released code (2018cx/SinKD, loss.py) scales its batch-wise Sinkhorn cost by
# 0.0008 * 20 / 8 before adding it to the task loss.
SINKD_AUTHORS_WEIGHT = 0.0008 * 20 / 8


# ------------------------------------------------------------------------------------------------
# Preparation shared by the losses.


def _is_number(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_float(x, name):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be floating point, got {x.dtype}; cast with .astype(jnp.float32)."
        )
    return x


def _upcast(x):
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def _softcap(z, cap):
    if cap is None:
        return z
    cap = jnp.asarray(cap, z.dtype)
    neg_inf = jnp.isneginf(z)
    safe = jnp.where(neg_inf, jnp.zeros((), z.dtype), z)
    return jnp.where(neg_inf, z, cap * jnp.tanh(safe / cap))


def _prepare(teacher_logits, student_logits, *, where, cap, trim):
    """Checks the pair and returns ``(teacher, student, mask)`` ready for fdiv.discrete.

    Masked rows are zeroed here, before soft-capping, so NaN/inf in them cannot reach gradients.
    """
    teacher = _check_float(teacher_logits, "teacher_logits")
    student = _check_float(student_logits, "student_logits")
    if teacher.ndim == 0 or student.ndim == 0:
        raise ValueError(
            "teacher_logits and student_logits need a class axis (the last),"
            f" got shapes {teacher.shape} and {student.shape}."
        )
    t_vocab, s_vocab = teacher.shape[-1], student.shape[-1]
    if t_vocab != s_vocab:
        if trim and t_vocab > s_vocab:
            teacher = teacher[..., :s_vocab]
        else:
            raise ValueError(
                vocab_mismatch_message(
                    t_vocab,
                    s_vocab,
                    f"teacher_logits.shape={teacher.shape}",
                    f"student_logits.shape={student.shape}",
                )
            )
    if teacher.shape != student.shape:
        raise ValueError(
            "teacher_logits and student_logits must have the same leading shape, got"
            f" teacher_logits.shape={teacher.shape} and student_logits.shape={student.shape}."
        )
    if cap is not None and _is_number(cap) and not float(cap) > 0:
        raise ValueError(f"softcap must be > 0 or None, got {cap}; Gemma 2 uses 30.0.")
    out_shape = teacher.shape[:-1]
    mask = None
    if where is not None:
        mask = _checks.check_mask(
            where,
            out_shape,
            f"the output shape {out_shape} (the"
            f" logits shape {teacher.shape} without the class axis)",
        )
        keep = jnp.broadcast_to(mask, out_shape)[..., None]
        teacher = jnp.where(keep, teacher, jnp.zeros((), teacher.dtype))
        student = jnp.where(keep, student, jnp.zeros((), student.dtype))
    teacher = _softcap(_upcast(teacher), cap)
    student = _softcap(_upcast(student), cap)
    return teacher, student, mask


def _check_temperature(temperature):
    if _is_number(temperature) and not float(temperature) > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; distillation usually uses 1 to 10."
        )
    return temperature


def _tau_squared(temperature, dtype):
    t = jnp.asarray(temperature, dtype)
    return t * t


def _finish(values, mask):
    if mask is None:
        return values
    return jnp.where(mask, values, jnp.zeros((), values.dtype))


def mask_from_labels(labels: ArrayLike, ignore_index: int = -100) -> Array:
    """``labels != ignore_index``: the ``where`` mask of real positions (PyTorch convention).

    Args:
      labels: integer labels of any shape; padding positions hold ``ignore_index``.
      ignore_index: the padding label (PyTorch and Hugging Face use ``-100``).
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got {labels.dtype}.")
    return labels != ignore_index


def reduce(loss: ArrayLike, where: ArrayLike | None = None) -> Array:
    """Mean of a per-position ``loss`` over the real positions (``where`` true).

    Masked positions do not count in the numerator nor in the denominator, and NaN/inf there
    cannot reach the value or the gradient. With no real position the mean is ``0``.

    Args:
      loss: per-position losses, any shape.
      where: optional boolean mask broadcastable to ``loss.shape``; ``None`` averages all.

    Returns:
      A scalar in the loss's dtype (at least float32).
    """
    loss = _upcast(_check_float(loss, "loss"))
    if where is None:
        return jnp.mean(loss)
    mask = jnp.broadcast_to(
        _checks.check_mask(where, loss.shape, f"loss.shape={loss.shape}"), loss.shape
    )
    total = jnp.sum(jnp.where(mask, loss, jnp.zeros((), loss.dtype)))
    count = jnp.sum(mask).astype(loss.dtype)
    return total / jnp.maximum(count, 1)


# ------------------------------------------------------------------------------------------------
# Losses.


def kd_loss(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    *,
    temperature: ArrayLike,
    where: ArrayLike | None = None,
    softcap: float | None = None,
    trim_teacher_vocab: bool = False,
) -> Array:
    r"""Classic KD: ``tau^2 KL(softmax(z_t / tau) || softmax(z_s / tau))`` per position.

    ``docs/reference.md`` section 7. Usually added to the student's label cross-entropy with a
    weight. Equal to ``divergence_loss(..., "forward_kl", temperature=tau)``.

    Args:
      teacher_logits: ``[..., num_classes]`` teacher logits (``P``).
      student_logits: ``[..., num_classes]`` student logits (``Q``), same shape.
      temperature: softmax temperature ``tau`` for both sides (positive; required because the
        right value depends on the task: 1 to 4 for language models, 4 for CIFAR).
      where: optional boolean mask of real positions, shape ``[...]``.
      softcap: optional ``c``: logits become ``c tanh(z / c)`` on both sides.
      trim_teacher_vocab: drop the teacher's columns beyond the student's vocabulary.

    Returns:
      ``[...]`` float32 (float64 for float64 inputs) losses.

    References:
      Hinton, Vinyals and Dean, `Distilling the Knowledge in a Neural Network
      <https://arxiv.org/abs/1503.02531>`_, 2015.
    """
    return divergence_loss(
        teacher_logits,
        student_logits,
        "forward_kl",
        temperature=temperature,
        where=where,
        softcap=softcap,
        trim_teacher_vocab=trim_teacher_vocab,
    )


def divergence_loss(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    divergence: str | Callable[..., Array],
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    softcap: float | None = None,
    trim_teacher_vocab: bool = False,
) -> Array:
    r"""``tau^2 D(P_t || Q_s)`` per position for any divergence, ``P``/``Q`` softmaxed at ``tau``.

    Args:
      teacher_logits: ``[..., num_classes]`` teacher logits (``P``, the target).
      student_logits: ``[..., num_classes]`` student logits (``Q``, the model).
      divergence: a registered f-divergence name or alias (``"forward_kl"``, ``"reverse_kl"``,
        ``"js"``, ``"total_variation"``, ... see ``fdiv.divergences.names()``) or an
        ``FDivergence`` (``fdiv.divergences.get("alpha", alpha=0.5)``); ``"skew_kl"`` /
        ``"skew_reverse_kl"`` (DistiLLM, ``alpha=0.1``), ``"generalized_jsd"`` (GKD,
        ``beta=0.5``), ``"cauchy_schwarz"``; or any callable with the signature of
        :func:`fdiv.discrete.skew_kl`, e.g. ``functools.partial(fdiv.discrete.generalized_jsd,
        beta=0.9)``.
      temperature: softmax temperature of both sides; the result is multiplied by ``tau**2``.
      where: optional boolean mask of real positions, shape ``[...]``.
      softcap: optional ``c``: logits become ``c tanh(z / c)`` on both sides (``-inf`` kept).
      trim_teacher_vocab: drop the teacher's columns beyond the student's vocabulary.

    Returns:
      ``[...]`` losses, float32 for float32/bfloat16 inputs.

    Raises:
      ValueError: differing vocabularies (both sizes named) or shapes, non-floating logits, a
        bad mask, temperature or soft-cap, an unknown divergence name.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fdiv.kd import divergence_loss
      >>> teacher = jnp.array([[2.0, 0.5, -1.0]])
      >>> student = jnp.array([[1.0, 1.0, -0.5]])
      >>> divergence_loss(teacher, student, "js", temperature=2.0).round(4)  # tau^2 JS per position
      Array([0.0691], dtype=float32)

    References:
      Ko et al., `DistiLLM <https://arxiv.org/abs/2402.03898>`_, 2024 (skew KL); Agarwal et
      al., `On-Policy Distillation of Language Models (GKD)
      <https://arxiv.org/abs/2306.13649>`_, 2024; Wu et al., `Rethinking Kullback-Leibler
      Divergence in Knowledge Distillation for Large Language Models
      <https://arxiv.org/abs/2404.02657>`_, 2024 (forward vs reverse KL).
    """
    fn = resolve_divergence(divergence)
    _check_temperature(temperature)
    teacher, student, mask = _prepare(
        teacher_logits, student_logits, where=where, cap=softcap, trim=trim_teacher_vocab
    )
    values = fn(teacher, student, temperature=temperature, where=mask)
    return _finish(values * _tau_squared(temperature, values.dtype), mask)


def _safe_entropy(log_probs):
    """``-sum p log p`` over the last axis with ``0 log 0 = 0`` and finite gradients there."""
    zero = jnp.isneginf(log_probs)
    safe = jnp.where(zero, jnp.zeros((), log_probs.dtype), log_probs)
    return -jnp.sum(jnp.where(zero, jnp.zeros((), log_probs.dtype), jnp.exp(safe) * safe), axis=-1)


def entropy_balance_weight(teacher_log_probs: Array, student_log_probs: Array) -> Array:
    r"""BD-KD weight of the forward KL: ``w = H(p_t) / (H(p_t) + H(p_s))``, per position.

    The BD-KD paper's principle is to shift weight between ``KL(p_t || p_s)`` (forward,
    mass-covering: it spreads the student's mass) and ``KL(p_s || p_t)`` (reverse, mode-seeking:
    it sharpens the student) according to the two networks' confidence. The exact rule could not
    be established from any available source (``docs/reference.md`` section 7), so this is a
    rule that follows the principle: a student more confident than its teacher
    (``H(p_s) < H(p_t)``) gets ``w > 1/2`` (more forward KL, to soften it); a student less
    confident gets more reverse KL. ``w = 1/2`` when the entropies are equal (also both zero).
    No gradient flows through ``w``.

    Args:
      teacher_log_probs, student_log_probs: ``[..., num_classes]`` log-probabilities.

    Returns:
      ``[...]`` weights in ``[0, 1]``.
    """
    h_t = _safe_entropy(jax.lax.stop_gradient(teacher_log_probs))
    h_s = _safe_entropy(jax.lax.stop_gradient(student_log_probs))
    total = h_t + h_s
    return jnp.where(total > 0, h_t / jnp.where(total > 0, total, 1.0), 0.5)


def bdkd_loss(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    *,
    weight: ArrayLike | Callable[[Array, Array], Array] = entropy_balance_weight,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    softcap: float | None = None,
    trim_teacher_vocab: bool = False,
) -> Array:
    r"""BD-KD: ``tau^2 [w KL(p_t || p_s) + (1 - w) KL(p_s || p_t)]`` per position.

    ``docs/reference.md`` section 7. The paper balances the two directions per sample by the
    networks' confidence, but its rule for ``w`` could not be established from any available
    source. The default :func:`entropy_balance_weight` is an entropy-based rule that follows the
    stated principle (see its docstring); it is *not* the paper's formula. ``weight`` is
    pluggable: a number, an array broadcastable to the output shape, or a function
    ``(teacher_log_probs, student_log_probs) -> [...]`` of the log-probabilities at ``tau``.

    Args:
      teacher_logits, student_logits: ``[..., num_classes]`` logits (``P`` teacher, ``Q``
        student).
      weight: the forward-KL weight ``w`` (see above); ``1`` is KD, ``0`` reverse KL.
      temperature: softmax temperature of both sides; the result is multiplied by ``tau**2``.
      where, softcap, trim_teacher_vocab: as in :func:`divergence_loss`.

    Returns:
      ``[...]`` float32 losses.

    References:
      Amara, Ziaeefard, Meyer, Gross and Clark, `BD-KD: Balancing the Divergences for Online
      Knowledge Distillation <https://arxiv.org/abs/2212.12965>`_, 2022.
    """
    _check_temperature(temperature)
    teacher, student, mask = _prepare(
        teacher_logits, student_logits, where=where, cap=softcap, trim=trim_teacher_vocab
    )
    forward = _discrete.categorical_divergence(
        teacher, student, "forward_kl", temperature=temperature, where=mask
    )
    reverse = _discrete.categorical_divergence(
        teacher, student, "reverse_kl", temperature=temperature, where=mask
    )
    if callable(weight):
        tau = jnp.asarray(temperature, teacher.dtype)
        w = weight(
            jax.nn.log_softmax(teacher / tau, axis=-1), jax.nn.log_softmax(student / tau, axis=-1)
        )
    else:
        if _is_number(weight) and not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}.")
        w = jnp.asarray(weight, forward.dtype)
    w = jnp.asarray(w, forward.dtype)
    # Where a direction is infinite and its weight is 0 the term is 0, not NaN.
    fwd_term = jnp.where(w > 0, w * forward, jnp.zeros((), forward.dtype))
    rev_term = jnp.where(w < 1, (1 - w) * reverse, jnp.zeros((), forward.dtype))
    values = (fwd_term + rev_term) * _tau_squared(temperature, forward.dtype)
    return _finish(values, mask)


def nkd_loss(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    gamma: ArrayLike = 1.5,
    where: ArrayLike | None = None,
    ignore_index: int | None = -100,
    softcap: float | None = None,
    trim_teacher_vocab: bool = False,
) -> Array:
    r"""Normalised KD (NKD), per position, as in its authors' released code.

    Follows ``NKDLoss.forward`` of ``yzd-v/cls_KD`` (``mmcls/models/dis_losses/nkd.py``), and
    ``docs/reference.md`` section 7. With label ``y``, ``p_t = softmax(z_t)``,
    ``log q = log_softmax(z_s)`` (both at temperature 1):

    .. math::
      L = -\mathrm{sg}(p_t[y]) \log q[y]
          - \gamma \tau^2 \sum_{c \ne y} \hat p_t(c) \log \hat q(c),

    where ``hat p_t`` and ``hat q`` are the softmaxes at temperature ``tau`` of the logits
    without the target class (renormalised over the non-target classes; here by setting the
    target logit to ``-inf``). As in that code the second term is a cross-entropy (not a KL, so
    it includes the teacher's non-target entropy) and only ``p_t[y]`` is stop-gradient. The
    authors' code averages over the batch; here the result is per position. Their total loss is
    the student's label cross-entropy plus NKD; defaults ``tau = 1, gamma = 1.5`` (ImageNet),
    ``tau = 3, gamma = 3.5`` (CIFAR-100).

    Args:
      teacher_logits, student_logits: ``[..., num_classes]`` logits.
      labels: ``[...]`` integer class labels (the ``label`` of the code; one-hot labels are
        reduced with ``argmax`` there: pass ``argmax`` here).
      temperature: ``tau`` of the non-target term.
      gamma: weight of the non-target term.
      where: optional boolean mask of real positions, combined with ``ignore_index``.
      ignore_index: label value marking padding (masked), or ``None``.
      softcap, trim_teacher_vocab: as in :func:`divergence_loss`.

    Returns:
      ``[...]`` float32 losses.

    References:
      Yang, Zeng, Li, Zhang, Yuan and Li, `From Knowledge Distillation to Self-Knowledge
      Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels
      <https://arxiv.org/abs/2303.13005>`_, ICCV 2023.
    """
    _check_temperature(temperature)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be integer class indices, got {labels.dtype}; for"
            " one-hot labels pass labels.argmax(-1)."
        )
    student_shape = jnp.shape(student_logits)
    if labels.shape != tuple(student_shape[:-1]):
        raise ValueError(
            f"labels must have shape {tuple(student_shape[:-1])} (student_logits"
            f" without the class axis), got labels.shape={labels.shape}."
        )
    mask = None if ignore_index is None else labels != ignore_index
    if where is not None:
        given = _checks.check_mask(where, labels.shape, f"labels.shape={labels.shape}")
        mask = given if mask is None else (mask & given)
    teacher, student, mask = _prepare(
        teacher_logits, student_logits, where=mask, cap=softcap, trim=trim_teacher_vocab
    )
    num_classes = student.shape[-1]
    safe_labels = labels if mask is None else jnp.where(mask, labels, 0)
    try:
        concrete = np.asarray(safe_labels)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None  # traced labels: the range cannot be checked
    if (
        concrete is not None
        and concrete.size
        and not (0 <= concrete.min() and concrete.max() < num_classes)
    ):
        raise ValueError(
            f"labels must be in [0, {num_classes}) (or ignore_index), got values"
            f" in [{concrete.min()}, {concrete.max()}]."
        )
    target = jax.nn.one_hot(safe_labels, num_classes, dtype=jnp.bool_)

    log_t = jax.nn.log_softmax(teacher, axis=-1)
    log_s = jax.nn.log_softmax(student, axis=-1)
    t_target = jax.lax.stop_gradient(jnp.exp(jnp.sum(jnp.where(target, log_t, 0), axis=-1)))
    s_target = jnp.sum(jnp.where(target, log_s, 0), axis=-1)
    # A target the teacher gives probability 0 contributes 0 even where log q[y] = -inf.
    target_term = jnp.where(t_target > 0, -t_target * s_target, jnp.zeros((), t_target.dtype))

    tau = jnp.asarray(temperature, teacher.dtype)
    neg_inf = jnp.full((), -jnp.inf, teacher.dtype)
    log_t_non = jax.nn.log_softmax(jnp.where(target, neg_inf, teacher / tau), axis=-1)
    log_s_non = jax.nn.log_softmax(jnp.where(target, neg_inf, student / tau), axis=-1)
    # Cross-entropy -sum p log q with 0 log(anything) = 0; the target class has p = 0.
    p_zero = jnp.isneginf(log_t_non)
    safe_log_s = jnp.where(p_zero, jnp.zeros((), log_s_non.dtype), log_s_non)
    safe_log_t = jnp.where(p_zero, jnp.zeros((), log_t_non.dtype), log_t_non)
    cross = -jnp.sum(jnp.where(p_zero, 0.0, jnp.exp(safe_log_t) * safe_log_s), axis=-1)
    gamma = jnp.asarray(gamma, teacher.dtype)
    values = target_term + gamma * tau * tau * cross
    return _finish(values, mask)


def sinkd_loss(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    *,
    weight: float = SINKD_AUTHORS_WEIGHT,
    temperature: float = 2.0,
    epsilon: float = 0.1,
    num_iters: int = 20,
) -> Array:
    r"""SinKD: ``weight * fdiv.transport.sinkd(teacher_logits, student_logits, ...)``.

    SinKD compares the teacher's and the student's ``[batch, num_classes]`` softmax outputs
    *batch-wise* with a Sinkhorn transport cost (``fdiv.transport.sinkd`` documents the cost,
    plan and scale), so unlike the other losses here the result is **one scalar per batch**,
    not per position. The default ``weight = 0.0008 * 20 / 8 = 0.002`` is the factor of the
    authors' released code (``2018cx/SinKD``, ``loss.py``), with their temperature 2, entropic
    regularisation 0.1 and 20 iterations.

    References:
      Cui, Qin, Gao et al., `Sinkhorn Distance Minimization for Knowledge Distillation
      <https://arxiv.org/abs/2402.17110>`_, LREC-COLING 2024.
    """
    try:
        from fdiv import transport  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise ImportError(
            "sinkd_loss needs fdiv.transport (the ott-jax based estimators),"
            " which this installation does not have."
        ) from e
    return weight * transport.sinkd(
        teacher_logits,
        student_logits,
        temperature=temperature,
        epsilon=epsilon,
        num_iters=num_iters,
    )


def teacher_topk(teacher_logits: ArrayLike, k: int) -> tuple[Array, Array, Array]:
    r"""What to store of a teacher for :func:`topk_divergence_loss`: its top-``k``
    log-probabilities, their ids and the exact log-mass of every other class.

    The tail is ``logsumexp`` of the log-probabilities outside the top ``k``, computed from the
    full logits, so it keeps float32 accuracy however close the top mass is to 1 and whatever
    precision the top-k values are stored in afterwards (``1 - sum`` of stored bfloat16
    probabilities is off by about ``4e-3`` times the top mass).

    Args:
      teacher_logits: ``[..., vocab]`` logits (any float dtype; computed in float32).
      k: number of classes to keep, ``1 <= k <= vocab``.

    Returns:
      ``(topk_logprobs [..., k] float32, topk_ids [..., k] int32, tail_logprob [...] float32)``;
      ``tail_logprob`` is ``-inf`` when ``k == vocab``.
    """
    logits = _upcast(_check_float(teacher_logits, "teacher_logits"))
    if logits.ndim == 0:
        raise ValueError("teacher_logits must be [..., vocab], got a scalar.")
    vocab = logits.shape[-1]
    if not isinstance(k, numbers.Integral) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an integer in [1, vocab = {vocab}], got {k!r}.")
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    values, ids = jax.lax.top_k(log_p, int(k))
    in_top = jnp.put_along_axis(
        jnp.zeros(log_p.shape, jnp.bool_), ids, True, axis=-1, inplace=False
    )
    tail = jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, log_p), axis=-1)
    return values, ids.astype(jnp.int32), tail


def topk_divergence_loss(
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    student_logits: ArrayLike,
    divergence: str | Callable[..., Array] = "forward_kl",
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    tail_floor: float | None = None,
    teacher_tail_logprob: ArrayLike | None = None,
) -> Array:
    r"""Divergence against an offline teacher stored as its top-k log-probabilities and ids.

    The vocabulary is coarsened into ``k + 1`` buckets: the teacher's ``k`` stored classes and
    one *tail* bucket holding every other class. The teacher's tail mass is ``1 - sum_k p_t``
    (from the stored log-probabilities, computed as ``log(-expm1(logsumexp))``); the student's
    bucket masses are exact (its ``k`` log-probabilities at the ids and the ``logsumexp`` of the
    rest). The loss is ``tau^2 D(P_buckets || Q_buckets)``.

    The approximation, precisely:

    * At ``temperature = 1`` the teacher's buckets are exact, so for any f-divergence the result
      is the divergence of the coarsened distributions, a **lower bound** on the full-vocabulary
      divergence (data-processing inequality); the gap is the divergence *inside* the tail,
      weighted by the tail masses, and vanishes as ``k -> vocab`` (equality at ``k = vocab``).
    * At other temperatures the teacher's tail is unknown; it is modelled as spread uniformly
      over the ``vocab - k`` remaining classes before tempering (tail bucket
      ``(V - k)^{1 - 1/tau} r^{1/tau}`` for tail mass ``r``), which is exact when the teacher's
      tail is flat and an approximation otherwise.
    * The stored log-probabilities must be those of the full teacher distribution at
      temperature 1 (as returned by inference servers), not renormalised over the ``k`` ids.
      A tail mass computed from stored probabilities that sum to nearly 1 is known only to the
      dtype's resolution (about ``1e-7`` in float32) and may round to zero; it is floored at
      ``tail_floor`` (default: the dtype's epsilon) so that divergences infinite where
      ``p = 0 < q`` (reverse KL, Neyman) stay finite. ``tail_floor=0`` disables the floor.
      Pass ``teacher_tail_logprob`` (from :func:`teacher_topk`, computed where the full logits
      exist) instead to use the exact tail, which is what float32 accuracy needs when the top-k
      values are stored in bfloat16 or the top mass is close to 1; no floor is applied to it.

    Args:
      teacher_topk_logprobs: ``[..., k]`` the teacher's log-probabilities of its top classes.
      teacher_topk_ids: ``[..., k]`` their class ids (distinct within a row, not checked under
        tracing).
      student_logits: ``[..., vocab]`` student logits.
      divergence: as in :func:`divergence_loss`.
      temperature: temperature of both sides (see above); the result is times ``tau**2``.
      where: optional boolean mask of real positions.
      tail_floor: the least teacher tail mass (see above); ``None`` is the dtype's epsilon.
      teacher_tail_logprob: optional ``[...]`` log of the teacher's mass outside its top ``k``
        (at temperature 1), e.g. the third output of :func:`teacher_topk`.

    Returns:
      ``[...]`` float32 losses.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from fdiv import kd
      >>> teacher = jax.random.normal(jax.random.key(0), (4, 1000)) * 3
      >>> student = jax.random.normal(jax.random.key(1), (4, 1000))
      >>> logp, ids, tail = kd.teacher_topk(teacher, 64)
      >>> loss = kd.topk_divergence_loss(
      ...     logp.astype(jnp.bfloat16), ids, student, "js", teacher_tail_logprob=tail)
      >>> loss.shape, loss.dtype
      ((4,), dtype('float32'))

    References:
      Anshumann et al., `Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs
      <https://arxiv.org/abs/2503.16870>`_, 2025 (top-k caching and its bias); MaxText's sparse
      top-k KL.
    """
    fn = resolve_divergence(divergence)
    _check_temperature(temperature)
    topk = _upcast(_check_float(teacher_topk_logprobs, "teacher_topk_logprobs"))
    ids = jnp.asarray(teacher_topk_ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"teacher_topk_ids must be integers, got {ids.dtype}.")
    student = _upcast(_check_float(student_logits, "student_logits"))
    if topk.shape != ids.shape or topk.ndim == 0:
        raise ValueError(
            "teacher_topk_logprobs and teacher_topk_ids must have the same shape"
            f" [..., k], got {topk.shape} and {ids.shape}."
        )
    if student.ndim == 0 or topk.shape[:-1] != student.shape[:-1]:
        raise ValueError(
            f"student_logits must be [..., vocab] with leading shape"
            f" {topk.shape[:-1]}, got student_logits.shape={student.shape}."
        )
    k, vocab = topk.shape[-1], student.shape[-1]
    if k > vocab:
        raise ValueError(
            f"k = {k} stored teacher classes exceed the student's vocabulary size {vocab}."
        )
    out_shape = student.shape[:-1]
    tail_given = teacher_tail_logprob is not None
    if tail_given:
        given_tail = _upcast(_check_float(teacher_tail_logprob, "teacher_tail_logprob"))
        if given_tail.shape != out_shape:
            raise ValueError(
                f"teacher_tail_logprob must have the leading shape {out_shape} (one value per "
                f"position), got teacher_tail_logprob.shape={given_tail.shape}."
            )
    mask = None
    if where is not None:
        mask = _checks.check_mask(where, out_shape, f"the output shape {out_shape}")
        keep = jnp.broadcast_to(mask, out_shape)[..., None]
        topk = jnp.where(keep, topk, jnp.zeros((), topk.dtype))
        student = jnp.where(keep, student, jnp.zeros((), student.dtype))
        ids = jnp.where(keep, ids, jnp.arange(k, dtype=ids.dtype))
        if tail_given:
            # The masked rows' stand-in top mass is k (log 0 each); any finite tail will do.
            given_tail = jnp.where(keep[..., 0], given_tail, jnp.zeros((), given_tail.dtype))
    dtype = jnp.result_type(topk.dtype, student.dtype)
    topk, student = topk.astype(dtype), student.astype(dtype)
    tau = jnp.asarray(temperature, dtype)
    if tail_floor is None:
        tail_floor = float(jnp.finfo(dtype).eps)
    elif not 0.0 <= float(tail_floor) < 1.0:
        raise ValueError(f"tail_floor must be in [0, 1), got {tail_floor}.")

    log_q = jax.nn.log_softmax(student / tau, axis=-1)
    s_top = jnp.take_along_axis(log_q, ids, axis=-1)
    if k == vocab:
        t_buckets, s_buckets = topk / tau, s_top
    else:
        in_top = jnp.zeros(student.shape, jnp.bool_)
        in_top = jnp.put_along_axis(in_top, ids, True, axis=-1, inplace=False)
        s_tail = jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, log_q), axis=-1, keepdims=True)
        if tail_given:
            t_tail = given_tail.astype(dtype)[..., None]
            full = jnp.isneginf(t_tail)
        else:
            top_mass = jnp.minimum(jax.nn.logsumexp(topk, axis=-1, keepdims=True), 0.0)
            # log(1 - sum p) with the top mass 1 (tail 0) mapping to -inf without a NaN gradient.
            full = top_mass >= 0
            t_tail = jnp.where(full, -jnp.inf, jnp.log(-jnp.expm1(jnp.where(full, -1.0, top_mass))))
            if tail_floor:
                t_tail = jnp.maximum(t_tail, math.log(tail_floor))
                full = jnp.zeros_like(full)
        log_rest = math.log(vocab - k)
        t_tail = jnp.where(
            full, -jnp.inf, (jnp.where(full, 0.0, t_tail) - log_rest) / tau + log_rest
        )
        t_buckets = jnp.concatenate([topk / tau, t_tail], axis=-1)
        s_buckets = jnp.concatenate([s_top, s_tail], axis=-1)
    values = fn(t_buckets, s_buckets, temperature=1.0, where=mask)
    return _finish(values * _tau_squared(temperature, values.dtype), mask)
