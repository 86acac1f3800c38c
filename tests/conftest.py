"""Shared fixtures. Prefect state lives in a temporary PREFECT_HOME; flows run under one session harness."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from flows import configure_prefect

_HOME = Path(tempfile.mkdtemp(prefix="crucible-tests-"))
configure_prefect(_HOME)  # before anything imports prefect
os.environ["CRUCIBLE_CACHE_DIR"] = str(_HOME / "cache")  # remembered file hashes stay out of the user's ~/.cache
# The CLI's tables are read at the width a pipe gets (flows/cli_base.py), whatever COLUMNS the shell or an xdist
# worker (80) hands down: at 80 a rich table cuts "completed" in two.
os.environ["COLUMNS"] = "160"

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRUCIBLE_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path in ../shared, or a clean skip where a fresh clone has no ../shared."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared corpora sit beside the checkout, not in it)")
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session; yields its API URL for subprocesses."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def pydoc_warc(tmp_path_factory) -> Path:
    """Real HTML: 60 of Python's own pydoc pages in a WARC, as the demo makes them."""
    from tests.pydoc_pages import write_pydoc_warc

    return write_pydoc_warc(tmp_path_factory.mktemp("pydoc") / "pydoc.warc.gz", 60)


@pytest.fixture
def inputs(tmp_path) -> Path:
    """Three small WARC files of generated pages (near-copies of each other, so dedup keeps few)."""
    from tests.helpers import write_pages_warc

    d = tmp_path / "in"
    d.mkdir()
    write_pages_warc(d / "a.warc.gz", 23)
    write_pages_warc(d / "b.warc.gz", 3, start=100, paras=100)  # ~27 kB pages
    write_pages_warc(d / "c.warc.gz", 9, start=200)
    return d
