"""Every rule on a small hand-written document, with its exact drop reason."""
import random

import pytest

from tasks.config import QualityConfig
from tasks.quality import (QualityFilter, _duplicate_ngram_chars, _repeat_candidates, c4_lines, normalize,
                           redact)

GOOD = """The river flooded the lower town twice in the spring of that year, and the council met to decide what to do.
Some members wanted a higher wall along the bank, while others argued that the old mill race should be reopened.

After a long debate they agreed to survey the valley first. Two engineers walked the banks for a week and measured
the depth of the channel at every bend. Their report showed that silt had narrowed the river near the bridge.

The council paid to dredge the channel in the autumn. When the rains came again the water stayed within its banks,
and the market by the bridge opened on time. People still talk about the survey with some pride."""


def check(text, url="http://example.org/page", **cfg):
    kept, cleaned, reason, redactions = QualityFilter(QualityConfig(**cfg)).apply(text, url)
    return reason


def test_a_good_document_is_kept():
    assert check(GOOD) is None


@pytest.mark.parametrize("text, reason", [
    (GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing.", "c4_lorem_ipsum"),
    (GOOD + "\nfunction f() { return 1; } is what the page said.", "c4_curly_bracket"),
    ("One short sentence here for you. Another one follows it here. A third one too.", "c4_too_few_sentences"),
])
def test_c4_document_rules(text, reason):
    assert check(text) == reason


def test_c4_line_filter_removes_short_javascript_and_policy_lines():
    text = ("Menu\nPlease enable JavaScript to view this site properly today.\nRead our privacy policy and "
            "terms of use here.\nThis line is a real sentence with enough words.")
    cleaned, removed = c4_lines(text, QualityConfig())
    assert cleaned == "This line is a real sentence with enough words." and removed == 3
    strict, _ = c4_lines("A line without an end\nA line with an end.", QualityConfig(c4_terminal_punctuation=True))
    assert strict == "A line with an end."


def test_gopher_quality_rules():
    words = GOOD.split()
    assert check(" ".join(words[:40]) + ".", c4=False) == "gopher_too_few_words"
    assert check(GOOD, gopher_max_words=50) == "gopher_too_many_words"
    assert check(GOOD.replace("the", "# the"), c4=False) == "gopher_too_many_hashes"
    assert check(GOOD + "\n" + "and then... " * 25, c4=False, fineweb=False,
                 gopher_repetition=False) == "gopher_too_many_ellipses"
    bullets = "\n".join(f"- item number {i} in the list of things to buy at the market." for i in range(30))
    assert check(bullets + "\nThe end of the list is here.", c4=False, gopher_repetition=False,
                 fineweb=False) == "gopher_too_many_bullet_lines"
    assert check(GOOD, c4=False, gopher_max_ellipsis_lines_ratio=0.0,
                 gopher_quality=True) is None  # no line ends in an ellipsis
    tailing = "\n".join(f"Line {i} of the story trails off into nothing at all and then…" for i in range(20))
    assert check(tailing, c4=False, gopher_repetition=False, fineweb=False) == "gopher_too_many_ellipsis_lines"
    numbers = GOOD + "\n" + " ".join(str(i) for i in range(60))
    assert check(numbers, c4=False, fineweb=False) == "gopher_too_few_alpha_words"
    no_stops = " ".join(w for w in GOOD.split() if w.lower().strip(".,") not in {"the", "to", "of", "and", "that", "with"})
    assert check(no_stops, c4=False, fineweb=False) == "gopher_too_few_stop_words"
    assert check("Tiny words. " * 30, c4=False, gopher_min_words=0, gopher_repetition=False,
                 gopher_min_mean_word_length=5) == "gopher_short_mean_word"
    assert check(GOOD, gopher_max_mean_word_length=3.5) == "gopher_long_mean_word"


def test_gopher_repetition_rules():
    para = GOOD.split("\n\n")
    assert check("\n\n".join(para + para[:1] * 2), c4=False) == "gopher_dup_paragraphs"
    assert check("\n\n".join(para + [para[0]]), c4=False, gopher_max_dup_para_ratio=1) == "gopher_dup_paragraph_chars"
    lines = GOOD.split("\n")
    assert check("\n".join(lines + lines[:4]), c4=False, gopher_max_dup_para_char_ratio=1,
                 gopher_max_dup_para_ratio=1) == "gopher_dup_lines"
    assert check(GOOD + "\n" + "the market " * 120, c4=False, fineweb=False) == "gopher_top_2_gram"
    phrase = "alpha beta gamma delta epsilon zeta eta theta "
    assert check(GOOD + "\n" + phrase * 10, c4=False, fineweb=False,
                 gopher_top_ngram_ratios={}) == "gopher_dup_5_grams"


def test_duplicate_ngram_walk_over_candidates_matches_the_full_walk():
    """The fast path looks only where the shortest n-gram repeats; it must count exactly what the full walk does."""
    rng = random.Random(7)
    vocab = "a b c d e f".split()
    for _ in range(200):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 60))]
        candidates = _repeat_candidates(words, 5)
        for n in range(5, 11):
            assert _duplicate_ngram_chars(words, n, candidates) == _duplicate_ngram_chars(words, n), (words, n)
    assert _repeat_candidates("one two three four five six seven".split(), 5) == []


def test_fineweb_rules():
    unpunctuated = "\n".join(f"a heading about topic number {i} with words" for i in range(50)) + "\n" + GOOD
    assert check(unpunctuated, c4=False, gopher_quality=False, gopher_repetition=False) == "fineweb_line_punct_ratio"
    short = "\n".join(f"Short line {i}." for i in range(40)) + "\n" + GOOD
    assert check(short, c4=False, gopher_quality=False, gopher_repetition=False) == "fineweb_short_line_ratio"
    dup = GOOD + "\nThe same closing line repeats here.\nThe same closing line repeats here."
    assert check(dup, c4=False, gopher_repetition=False) == "fineweb_dup_line_chars"
    listy = "\n".join(f"Word{i}." for i in range(80))
    assert check(listy, c4=False, gopher_quality=False, gopher_repetition=False,
                 fineweb_max_short_line_ratio=1) == "fineweb_list_ratio"


def test_blocklists(tmp_path):
    assert check(GOOD, "http://ads.spam.example/x", host_blocklist=["spam.example"]) == "host_blocklist"
    assert check(GOOD, "http://ok.example/x", host_blocklist=["spam.example"]) is None
    listed = tmp_path / "hosts.txt"
    listed.write_text("# mine\nbad.example\n")
    assert check(GOOD, "https://bad.example/", host_blocklist_file=listed) == "host_blocklist"
    rude = GOOD.replace("survey", "fucking survey")
    assert check(rude) == "offensive_words"
    assert check(rude, builtin_offensive_words=False) is None
    words = tmp_path / "words.txt"
    words.write_text("dredge\n")
    assert check(GOOD, builtin_offensive_words=False, offensive_words_file=words,
                 max_offensive_word_ratio=0.0) == "offensive_words"


def test_pii_is_redacted_and_counted():
    text, n = redact("Write to jane.doe@example.com or admin@mail.example.co.uk from 192.168.1.20 "
                     "or 2001:0db8:85a3:0000:0000:8a2e:0370:7334; see https://example.com/a?b=1.", urls=True)
    assert text == "Write to <EMAIL> or <EMAIL> from <IP> or <IP>; see <URL>" and n == 5
    kept, cleaned, reason, redactions = QualityFilter(QualityConfig()).apply(GOOD + "\nMail me at a.b@c.org today.")
    assert kept and "<EMAIL>" in cleaned and redactions == 1
    assert redact("version 1.2.3.4.5 and 999.1.1.1", urls=False)[1] == 0


def test_normalize_nfc_and_whitespace_without_lowercasing():
    decomposed = "Cafe\u0301  au\u00a0lait\t\n\n\n\nNext  Line \x07"
    assert normalize(decomposed) == "Café au lait\n\nNext Line"


def test_quality_is_fast_enough_per_document():
    """Not a timing assertion: the per-document work must be linear, so a 100k-word document finishes."""
    big = (GOOD + "\n\n") * 400
    kept, _, reason, _ = QualityFilter(QualityConfig()).apply(big)
    assert reason == "gopher_dup_paragraphs"


def test_stage_keeps_cleaned_text_and_an_exclusion_log(tmp_path):
    import pyarrow.parquet as pq

    from tasks.language import SCHEMA as LANGUAGE_SCHEMA
    from tasks.quality import QualityStage
    from tasks.shards import DropLog, ShardResult, ShardWriter, finish_unit, write_dataset_manifest
    from tasks.sharded import run_unit

    up = tmp_path / "up"
    w = ShardWriter(up, "part-00000", LANGUAGE_SCHEMA, max_docs=100, max_bytes=10**9)
    w.add({"doc_id": "good", "url": "http://e.org/1", "text": GOOD + "\nWrite to me@example.org today.",
           "lang": "en", "lang_score": 1.0})
    w.add({"doc_id": "short", "url": "http://e.org/2", "text": "Too short.", "lang": "en", "lang_score": 1.0})
    write_dataset_manifest(up, "language", "k", [finish_unit(up, ShardResult("part-00000"), w, DropLog())])
    stage = QualityStage(QualityConfig(keep_dropped_text=True))
    [unit] = stage.plan(up)
    res = run_unit(stage, unit, tmp_path / "out")
    [kept] = pq.read_table(tmp_path / "out" / res.files[0].name).to_pylist()
    assert kept["doc_id"] == "good" and kept["pii_redactions"] == 1 and "<EMAIL>" in kept["text"]
    assert kept["lang"] == "en"
    [dropped] = pq.read_table(tmp_path / "out" / res.drops_file).to_pylist()
    assert (dropped["doc_id"], dropped["reason"], dropped["text"]) == ("short", "empty_after_cleaning", "Too short.")
    assert res.notes == {"pii_redacted_docs": 1}
