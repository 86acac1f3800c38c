"""Every figure per source for one run, as ``crucible show``, the report and the dashboard present it.

``source_overview(wh, run_id)`` returns {"stages": stage names in order, "rows": one per source with the documents
it had after each stage (``out.<stage>``), its documents in at the first stage, and the mixture's tokens, target
and realised shares, passes and validation documents at tokenize; "drops": (stage, source, reason, docs, bytes)}.
A cache hit shows the figures of the run that made the dataset. Empty for a run from before sources.
"""
from __future__ import annotations

from typing import Any

from warehouse.lineage import Warehouse

MIXTURE = ("tokens", "target_share", "share", "epochs", "val_docs")


def source_overview(wh: Warehouse, run_id: str) -> dict[str, Any]:
    figures = wh.source_figures(run_id)
    stages = list(dict.fromkeys(f["stage"] for f in figures))
    rows: dict[str, dict[str, Any]] = {}
    for f in figures:
        row = rows.setdefault(f["source"], {"source": f["source"], "docs_in": f["docs_in"]})
        row[f"out.{f['stage']}"] = f["docs_out"]
        for k in MIXTURE:
            if f[k] is not None:
                row[k] = f[k]
    return {"stages": stages, "rows": sorted(rows.values(), key=lambda r: r["source"]),
            "drops": wh.source_funnel(run_id)}
