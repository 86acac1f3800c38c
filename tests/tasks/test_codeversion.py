"""Cache keys cover the code a stage runs: editing any module a stage imports (transitively) changes its code
version, and editing a module it does not run leaves it alone."""
import shutil

import pytest

from tasks import codeversion
from tasks.registry import ORDER, stage_class


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the project's packages whose files the test may edit."""
    for package in codeversion.PACKAGES:
        shutil.copytree(codeversion.ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codeversion, "ROOT", tmp_path)
    return tmp_path


def roots(stage: str) -> list[str]:
    return stage_class(stage).code_roots()


def test_the_evaluate_stage_covers_what_it_imports():
    modules = codeversion.closure(roots("evaluate"))
    # what a hand-kept list missed: task formats and shots, the checkpoint loader, the tokenizer loader
    assert {"tasks.evalsets", "model.train", "tasks.tokenizer", "tasks.torchrun", "model.core"} <= set(modules)
    assert "tasks.config" not in modules and "tasks.crawl" not in modules


@pytest.mark.parametrize("stage", ORDER)
def test_editing_any_module_a_stage_runs_changes_its_code_version(tree, stage):
    before = codeversion.code_version(roots(stage))
    for module in codeversion.closure(roots(stage)):
        path = tree.joinpath(*module.split(".")).with_suffix(".py")
        if not path.exists():
            path = tree.joinpath(*module.split("."), "__init__.py")
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        assert codeversion.code_version(roots(stage)) != before, (stage, module)
        path.write_text(original)
    assert codeversion.code_version(roots(stage)) == before


def test_editing_a_module_a_stage_does_not_run_leaves_it_cached(tree):
    before = {s: codeversion.code_version(roots(s)) for s in ("extract", "evaluate")}
    crawl = tree / "tasks" / "crawl.py"
    crawl.write_text(crawl.read_text() + "\n# an edit\n")
    config = tree / "tasks" / "config.py"  # a stage's configuration enters its key as its own section
    config.write_text(config.read_text() + "\n# an edit\n")
    assert {s: codeversion.code_version(roots(s)) for s in before} == before


def test_stage_code_versions_use_the_closure():
    for stage in ORDER:
        assert stage_class(stage).code_version() == codeversion.code_version(roots(stage)), stage


DATA_STAGES = ("crawl", "ingest", "extract", "language", "quality", "dedup", "select", "decontaminate", "tokenize")


def test_no_stage_runs_another_stages_code():
    # a stage names the columns it reads through tasks/schemas.py, not through the module of the stage that wrote
    # them; evaluate loads the tokenizer through tasks/tokenizer.py and launches torchrun through tasks/torchrun.py
    modules = {stage_class(s).__module__ for s in ORDER}
    for stage in ORDER:
        others = set(codeversion.closure(roots(stage))) & modules - {stage_class(stage).__module__}
        assert not others, (stage, sorted(others))


def test_an_edit_to_the_warc_reader_reruns_ingest_alone_and_one_to_the_schemas_every_stage_that_reads_them(tree):
    before = {s: codeversion.code_version(roots(s)) for s in DATA_STAGES}
    records = tree / "tasks" / "records.py"  # ingest's tolerant WARC/ARC reader
    records.write_text(records.read_text() + "\n# an edit\n")
    after = {s: codeversion.code_version(roots(s)) for s in DATA_STAGES}
    assert [s for s in DATA_STAGES if after[s] != before[s]] == ["ingest"]
    readers = [s for s in DATA_STAGES if "tasks.schemas" in codeversion.closure(roots(s))]
    assert {"ingest", "extract", "language", "quality", "dedup", "select", "decontaminate"} <= set(readers)
    schemas = tree / "tasks" / "schemas.py"
    schemas.write_text(schemas.read_text() + "\n# an edit\n")
    again = {s: codeversion.code_version(roots(s)) for s in DATA_STAGES}
    assert [s for s in DATA_STAGES if again[s] != after[s]] == readers
