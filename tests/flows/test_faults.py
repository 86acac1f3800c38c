"""SIGKILL `crucible run` in the middle of a stage, rerun it, and get datasets byte-identical to an uninterrupted
run's. The full sweep (every data stage, several seeds) is `python benchmarks/faults.py`."""
from __future__ import annotations

import pytest

from tests.faults import kill_and_rerun, reference, write_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, pydoc_warc, prefect_harness):
    d = tmp_path_factory.mktemp("reference")
    return reference(write_config(d / "c.toml", d / "work", str(pydoc_warc)), prefect_harness)


@pytest.mark.parametrize("stage,seed", [("dedup", 2), ("select", 5), ("tokenize", 3)])  # extract: test_interrupt.py
def test_sigkill_in_a_stage_then_rerun_gives_the_same_datasets(tmp_path, pydoc_warc, prefect_harness, uninterrupted,
                                                                stage, seed):
    config = write_config(tmp_path / "c.toml", tmp_path / "work", str(pydoc_warc))
    result = kill_and_rerun(config, stage, seed, uninterrupted, prefect_harness)
    assert result.identical, result
    assert set(uninterrupted) >= {"ingest", "extract", "dedup", "tokenize"}
