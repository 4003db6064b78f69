"""f-DPG: align a character-level Shakespeare model to pi_0 restricted to a word constraint.

pi_0 (a small Flax NNX transformer trained on Shakespeare) is a cached stage: trained once into
``<cache_dir>/fdpg_lm_<digest of config.lm>`` and reused. The target is
``p(x) proportional to pi_0(x) b(x)``, ``b(x) = 1`` when the sample contains ``config.word``.
Each divergence in ``config.divergences`` aligns a copy of pi_0 under the same seeds and budget.

Run (the whole comparison)::

    python -m experiments.main --config=configs/fdpg.py --workdir=runs/fdpg

Measured runtime: 175 s end to end on the shared 2-core CPU (pi_0 800
steps ~70 s, then ~23 s of training per divergence); the table is ``<workdir>/results.md``.
Variants: ``:quick`` (seconds, used by the tests), ``:proposal`` (DPG's offline mode:
samples from a proposal that is replaced by the policy when the policy's estimated KL(p || .) is
lower).
"""

import ml_collections

import configs


def base():
    c = ml_collections.ConfigDict()
    c.experiment = "fdpg"
    c.seed = 0
    c.cache_dir = ""  # "": $FDIV_CACHE or ~/.cache/fdiv

    # pi_0: the base model (cached stage).
    c.lm = ml_collections.ConfigDict()
    c.lm.max_chars = 0  # 0: the whole corpus (about 5 M characters)
    c.lm.context = 64
    c.lm.d_model = 64
    c.lm.num_layers = 2
    c.lm.num_heads = 4
    c.lm.batch_size = 64
    c.lm.num_steps = 800
    c.lm.learning_rate = 3e-3
    c.lm.warmup_steps = 100
    c.lm.seed = 0
    c.lm.log_every = 250

    # The target and the alignment.
    c.word = "love"
    c.sample_len = 32  # characters generated after a newline
    # Training target: violations get log b = -violation_log_penalty instead of -inf, so reverse
    # KL (infinite against the exact restriction) is finite; metrics use the exact target.
    c.violation_log_penalty = 10.0
    c.divergences = ("forward_kl", "reverse_kl", "js", "total_variation")
    c.sampler = "policy"  # "policy" (on-policy) or "proposal" (DPG's offline mode)
    c.proposal_every = 25  # steps between proposal checks (sampler = "proposal")
    c.num_steps = 100
    c.batch_size = 128
    c.learning_rate = 5e-4
    c.grad_clip = 1.0
    c.baseline = "ema"  # "ema", "windowed" or "none"
    c.baseline_decay = 0.9
    c.baseline_window = 1024
    c.log_every = 10
    c.eval_every = 50
    c.eval_samples = 1024
    c.z_samples = 4096  # pi_0 samples for the constraint rate Z = P_pi0(b = 1)
    c.show_samples = 8
    c.checkpoint_every_steps = 50
    return c


def variant_quick(c):
    c.lm.max_chars = 60_000
    c.lm.context = 32
    c.lm.d_model = 32
    c.lm.num_layers = 1
    c.lm.num_heads = 2
    c.lm.batch_size = 16
    c.lm.num_steps = 20
    c.lm.log_every = 10
    c.word = "the"
    c.sample_len = 16
    c.num_steps = 4
    c.batch_size = 32
    c.log_every = 2
    c.eval_every = 2
    c.eval_samples = 64
    c.z_samples = 256
    c.proposal_every = 2
    c.show_samples = 2
    c.checkpoint_every_steps = 0  # only at the end
    return c


def variant_proposal(c):
    c.sampler = "proposal"
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
