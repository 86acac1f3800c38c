"""Word normalisation shared by dedup and decontamination: the letters-and-digits fast path gives exactly the words
of the per-word rules, on every kind of character a crawl holds."""
import random
import re
import unicodedata

from tasks.ngrams import normalized_words

EDGE, INNER = re.compile(r"^[\W_]+|[\W_]+$"), re.compile(r"[^\w'’-]")


def by_the_rules(text):
    """The definition: split on white space, strip \\W and _ from each word's edges, drop what is left empty, then
    remove what is not a word character, an apostrophe or a hyphen."""
    words = (EDGE.sub("", w) for w in unicodedata.normalize("NFC", text).casefold().split())
    return [INNER.sub("", w) for w in words if w]


def test_the_fast_path_gives_the_words_of_the_rules():
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace()]
    alphabet = spaces + list("aZ_-'’.,!?()\"“”«»—–…·•@#$%&*+=/\\|<>[]{}~`;:09९٣éß中\u0301\u200b\ufeffİﬁ²½") + ["😀"]
    rng = random.Random(0)
    for _ in range(30_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert normalized_words(text) == by_the_rules(text), repr(text)
    assert normalized_words("Hello, World! It's 'quoted' — e-mail_ x²") == ["hello", "world", "it's", "quoted",
                                                                          "e-mail", "x²"]


def test_real_multilingual_pages_give_the_words_of_the_rules():
    """The 130 readability test pages (en, fr, es, de, cs, pt, ja, zh; markup, scripts and entities included)."""
    import gzip

    from tests.conftest import shared_path

    pages = sorted(shared_path("corpora", "html", "mozilla_readability_testpages").glob("*/source.html.gz"))
    assert len(pages) > 100
    for page in pages:
        text = gzip.decompress(page.read_bytes()).decode("utf-8", "replace")
        assert normalized_words(text) == by_the_rules(text), page.parent.name
