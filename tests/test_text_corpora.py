"""The King James Bible corpus (Debian package bible-kjv) and `fdiv.data.text.load_corpus`."""

import re
import shutil

import pytest

from fdiv.data import text

needs_kjv = pytest.mark.skipif(shutil.which("bible") is None, reason=f"needs {text.KJV_INSTALL}")


@needs_kjv
def test_kjv_is_the_whole_bible_one_verse_per_line():
    c = text.load_kjv_bible()
    assert c.text.startswith("Genesis 1\n\nIn the beginning God created the heaven and the earth.")
    assert c.text.endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    lines = c.text.split("\n")
    headings = [l for l in lines if re.fullmatch(r"(?:[1-3] )?[A-Z][A-Za-z ]+ \d+", l)]
    verses = [l for l in lines if l and l not in set(headings)]
    # The KJV's 1189 chapters and 31102 verses; no verse keeps its number.
    assert len(headings) == 1189
    assert len(verses) == 31102
    assert not any(re.match(r"\d+ ", v) for v in verses)
    assert "Jesus wept." in verses  # John 11:35, the shortest verse
    # Deterministic, and max_chars truncates the same text.
    assert text.load_corpus("kjv", max_chars=500).text == c.text[:500]


def test_kjv_missing_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(text.shutil, "which", lambda name: None)
    with pytest.raises(ImportError, match=r"apt-get install bible-kjv"):
        text.load_kjv_bible()


def test_load_corpus_names():
    assert set(text.CORPORA) == {"shakespeare", "kjv"}
    with pytest.raises(ValueError, match=r"unknown corpus 'bibel'; corpora: shakespeare, kjv"):
        text.load_corpus("bibel")
