"""Language-ID accuracy of the language stage on labelled text: UDHR (~300-character pieces) and Tatoeba sentences.

    python benchmarks/language_quality.py                   # the languages configs/demo.toml keeps, plus a panel
    python benchmarks/language_quality.py --langs en de fr

Accuracy per language is the share of pieces whose top langid guess is that language; "kept" also requires the
score to clear the configured threshold, which is what the stage actually keeps.
"""
from __future__ import annotations

import argparse
import csv
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.config import load_config  # noqa: E402
from tasks.language import classify  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LANGID = ROOT.parent / "shared" / "corpora" / "langid"
ISO3 = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "pt": "por", "nl": "nld", "ru": "rus",
        "pl": "pol", "sv": "swe", "tr": "tur", "zh": "cmn", "ja": "jpn", "ar": "arb"}


def udhr(iso3: str) -> list[str]:
    with zipfile.ZipFile(LANGID / "nltk_udhr" / "udhr2.zip") as z:
        try:
            text = z.read(f"udhr2/{iso3}.txt").decode("utf-8")
        except KeyError:
            return []
    pieces, piece = [], ""
    for line in text.splitlines():
        piece = f"{piece} {line.strip()}".strip()
        if len(piece) >= 300:
            pieces.append(piece)
            piece = ""
    return pieces


def tatoeba(iso3: str) -> list[str]:
    with open(LANGID / "tatoeba_cc_cld2_sample" / "tatoeba_long.txt", encoding="utf-8") as fh:
        return [row["text"] for row in csv.DictReader(fh, delimiter="\t") if row["Tatoeba-iso-639-3"] == iso3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--langs", nargs="*", help="ISO 639-1 codes [default: the demo's, plus a panel]")
    args = parser.parse_args()
    if not LANGID.exists():
        sys.exit(f"{LANGID} is absent: the labelled text lives in ../shared beside the checkout")
    keep = load_config(ROOT / "configs" / "demo.toml").language.keep
    langs = args.langs or list(dict.fromkeys([*keep, "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja"]))
    print(f"{'lang':6}{'corpus':9}{'pieces':>7}{'accuracy':>10}{'kept':>7}")
    for lang in langs:
        iso3 = ISO3.get(lang, lang)
        for corpus, pieces in (("udhr", udhr(iso3)), ("tatoeba", tatoeba(iso3 if iso3 != "cmn" else "cmn"))):
            if not pieces:
                continue
            guesses = [classify(p) for p in pieces]
            right = sum(g == lang for g, _ in guesses)
            kept = sum(g == lang and s >= keep.get(lang, 0.0) for g, s in guesses)
            print(f"{lang:6}{corpus:9}{len(pieces):>7}{right / len(pieces):>10.3f}{kept / len(pieces):>7.3f}")


if __name__ == "__main__":
    main()
