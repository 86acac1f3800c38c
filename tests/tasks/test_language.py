import pytest

from tasks.config import ConfigError, LanguageConfig, parse_config
from tasks.language import LanguageStage, classify
from tests.conftest import shared_path

ENGLISH = ("The committee reviewed the proposal for the new library building and agreed that the reading rooms "
           "should stay open late during the examination weeks.")
FRENCH = ("Le comité a examiné la proposition pour la nouvelle bibliothèque et a convenu que les salles de lecture "
          "resteraient ouvertes tard pendant les semaines d'examens.")


def test_classify_folds_newlines_and_normalizes_scores():
    lang, score = classify(ENGLISH.replace(" ", "\n"))
    assert lang == "en" and 0.9 < score <= 1.0
    assert classify(FRENCH)[0] == "fr"


def test_unknown_language_code_fails_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"language.keep: Value error, unknown language codes \['english'\]"):
        parse_config({"language": {"keep": {"english": 0.5}}}, base=tmp_path)
    with pytest.raises(ConfigError, match="thresholds must be between 0 and 1"):
        parse_config({"language": {"keep": {"en": 1.5}}}, base=tmp_path)


def test_stage_keeps_configured_languages_and_records_the_rest(tmp_path):
    import pyarrow.parquet as pq

    from tasks.extract import SCHEMA
    from tasks.shards import DropLog, ShardResult, ShardWriter, finish_unit, write_dataset_manifest
    from tasks.sharded import run_unit

    up = tmp_path / "up"
    w = ShardWriter(up, "part-00000", SCHEMA, max_docs=100, max_bytes=10**9)
    for i, text in enumerate([ENGLISH, "Le chat.", "Dies ist ein kurzer deutscher Satz über das Wetter heute."]):
        w.add({"doc_id": f"d{i}", "url": f"http://e.com/{i}", "text": text})
    write_dataset_manifest(up, "extract", "k", [finish_unit(up, ShardResult("part-00000"), w, DropLog())])
    stage = LanguageStage(LanguageConfig(keep={"en": 0.5, "fr": 0.9}))
    [unit] = stage.plan(up)
    res = run_unit(stage, unit, tmp_path / "out")
    rows = pq.read_table(tmp_path / "out" / res.files[0].name).to_pylist()
    assert [(r["doc_id"], r["lang"]) for r in rows] == [("d0", "en")] and rows[0]["lang_score"] > 0.5
    drops = {r["doc_id"]: (r["reason"], r["detail"]) for r in pq.read_table(tmp_path / "out" / res.drops_file).to_pylist()}
    assert drops["d1"][0] == "lang_low_score" and drops["d1"][1].startswith("fr:")
    assert drops["d2"][0] == "lang_not_kept" and drops["d2"][1].startswith("de:")


def chunks(text: str, size: int = 300) -> list[str]:
    """Consecutive lines joined into pieces of about ``size`` characters."""
    out, piece = [], ""
    for line in text.splitlines():
        piece = f"{piece} {line.strip()}".strip()
        if len(piece) >= size:
            out.append(piece)
            piece = ""
    return out


def test_udhr_accuracy_for_kept_languages():
    import zipfile

    archive = shared_path("corpora", "langid", "nltk_udhr", "udhr2.zip")
    with zipfile.ZipFile(archive) as z:
        for iso3, iso1 in (("eng", "en"), ("fra", "fr"), ("deu", "de"), ("spa", "es")):
            pieces = chunks(z.read(f"udhr2/{iso3}.txt").decode("utf-8"))[:30]
            assert len(pieces) >= 20, iso3
            right = sum(classify(p)[0] == iso1 for p in pieces)
            assert right >= 0.9 * len(pieces), (iso3, right, len(pieces))


def test_the_decoded_model_kept_in_the_cache_classifies_exactly_as_langids_own(tmp_path, monkeypatch):
    import zipfile

    from langid.langid import LanguageIdentifier, model

    from tasks.language import _load_langid, langid_cache_path

    monkeypatch.setenv("CRUCIBLE_CACHE_DIR", str(tmp_path))
    archive = shared_path("corpora", "langid", "nltk_udhr", "udhr2.zip")
    reference = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    _load_langid()  # decodes langid's model and keeps the arrays
    cached = langid_cache_path()
    assert cached.is_file() and cached.is_relative_to(tmp_path)
    from_cache = _load_langid()
    with zipfile.ZipFile(archive) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".txt"))[::4]
        pieces = [piece for n in names for piece in chunks(z.read(n).decode("utf-8", errors="replace"), 200)[:3]]
    assert len(pieces) > 200
    assert [from_cache.classify(p) for p in pieces] == [reference.classify(p) for p in pieces]
    cached.write_bytes(cached.read_bytes()[:1000])  # a damaged cache entry: decoded again and rewritten
    assert _load_langid().classify(pieces[0]) == reference.classify(pieces[0])
    assert cached.stat().st_size > 1000
