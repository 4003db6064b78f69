"""f-DPG: align a character-level Shakespeare model to pi_0 restricted to a word constraint.

The base config is the fdpg experiment's typed defaults (`experiments.settings.FDPGConfig`).
pi_0 (a small Flax NNX transformer trained on Shakespeare) is a cached stage: trained once into
``<cache_dir>/fdpg_lm_<digest of config.lm>`` and reused. The target is
``p(x) proportional to pi_0(x) b(x)``, ``b(x) = 1`` when the sample contains ``config.word``.
Forward KL, reverse KL, JS and TV each align a copy of pi_0 on-policy, and forward KL and JS
also with DPG's proposal sampler, for every seed of ``config.seeds`` (0, 1, 2): 18 runs of 150
steps x 128 samples; the table ``<workdir>/results.md`` is the mean +- std over seeds, the
curves ``<workdir>/comparison.png``. Run (the whole comparison; finished runs resume)::

    python -m experiments.main --config=configs/fdpg.py --workdir=runs/fdpg

Measured on the shared 2-core CPU at the defaults (learning rate 2.5e-4; README table): 19
minutes end to end with pi_0 cached and another job running, 51-65 s of training a run (the
update compiled once); every on-policy divergence is stable and JS has the best balance. At
``--config.learning_rate=5e-4`` forward KL on-policy is unstable (one seed in three leaves pi_0
by 107 nats) and JS with the proposal collapses; at 1e-3 forward KL, JS and TV left pi_0 by
25-130 nats.
Variants: ``:quick`` (seconds, used by the tests), ``:proposal`` (every divergence with DPG's
proposal sampler: samples from a proposal that is replaced by the policy when the policy's
estimated divergence to the target is lower), ``:smollm2`` (below), ``:smollm2_step`` (its one-step timing).

``:smollm2`` aligns SmolLM2-135M-Instruct (``fdiv.nets.llama.from_gguf``, sampled with
``fdiv.nets.generate`` and a KV cache) so that its answer to ``config.prompt`` contains
``config.word``: JS, one seed, 500 steps x 32 answers of up to 32 tokens, learning rate 1e-5.
It is accelerator-sized. Measured on the loaded 2-core CPU with
``--config=configs/fdpg.py:smollm2_step`` (batch 4, 37-token chat prompt, 32 new tokens):
loading the GGUF file 6 s; first step 24.6 s (compilation included), the next one 15.9 s
(sampling with the KV cache + scoring under pi_0 + one gradient step of all 135 M float32
parameters with Adam); 106 s end to end, peak memory 8.1 GB. Extrapolated to ``:smollm2``
(500 steps x 32 answers): 16 s a step if the cost stays bound by reading the weights, 8 x 16 =
127 s if it grows linearly with the batch, so 2.2 to 18 hours of CPU, plus 11 evaluations and Z
on 256 and 1024 answers (about 70 batches of 4 sampled without gradients); on an accelerator
the same 500 steps are minutes.
"""

import configs
from experiments import settings


def base():
    return settings.to_config_dict(settings.FDPGConfig())


def variant_quick(c):
    lm = c.lm
    lm.max_chars, lm.context, lm.d_model, lm.num_layers, lm.num_heads = 60_000, 32, 32, 1, 2
    lm.batch_size, lm.num_steps, lm.log_every, lm.checkpoint_every_steps = 16, 20, 10, 0
    c.seeds = (0,)
    c.word, c.sample_len = "e", 16  # a barely trained pi_0 rarely spells a longer word
    c.proposal_divergences = ()
    c.num_steps, c.batch_size, c.log_every, c.eval_every = 4, 32, 2, 2
    c.eval_samples, c.z_samples, c.proposal_every, c.show_samples = 64, 256, 2, 2
    c.checkpoint_every_steps = 0  # only at the end
    return c


def variant_proposal(c):
    c.sampler = "proposal"
    c.proposal_divergences = ()
    return c


def variant_smollm2(c):
    c.model = "smollm2"
    c.seeds = (0,)
    c.word = "rain"
    c.sample_len = 32
    c.divergences = ("js",)
    c.proposal_divergences = ()
    c.batch_size = 32
    c.learning_rate = 1e-5
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every_steps = 500, 10, 50, 100
    c.eval_samples, c.z_samples, c.proposal_every = 256, 1024, 50
    return c


def variant_smollm2_step(c):
    c = variant_smollm2(c)
    c.batch_size, c.num_steps, c.log_every, c.eval_every = 4, 2, 1, 0
    c.eval_samples, c.z_samples, c.show_samples = 4, 4, 4
    c.checkpoint_every_steps, c.checkpoint_every_secs = 0, 0.0
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
