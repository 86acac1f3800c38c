"""The columns of the document records each stage writes, in one place, so that a stage names its input's columns
without importing the stage that wrote them.

A stage's code version is the hash of every project module it imports, followed (tasks/codeversion.py). When each
stage took its upstream's ``SCHEMA`` from that stage's module, decontaminate's code version covered select, dedup,
quality, language, extract and ingest (the WARC readers, the reference LM's training loop), so an edit to the
WARC reader reran every document stage even when ingest's output came out the same. Now a stage's code version
covers its own code and these schemas: an edit here changes every stage that imports them, as it should.

Each stage adds its columns to the ones it reads; every stage keeps the source columns, which tie a document to
the WARC record (or the curated file) it came from. The stage modules keep their name for their own:
``tasks.extract.SCHEMA is schemas.EXTRACT``.
"""
from __future__ import annotations

import pyarrow as pa

SOURCE_FIELDS = [
    pa.field("doc_id", pa.string()),
    pa.field("url", pa.string()),
    pa.field("host", pa.string()),
    pa.field("warc_file", pa.string()),
    pa.field("warc_offset", pa.int64()),
    pa.field("fetch_time", pa.timestamp("us", tz="UTC")),
    pa.field("http_status", pa.int32()),
    pa.field("content_type", pa.string()),
    pa.field("source", pa.string()),     # the [[sources]] entry the document came from
    pa.field("metadata", pa.string()),   # a JSON object of the fields a jsonl/parquet source keeps, or null
]
SOURCE_COLUMNS = [f.name for f in SOURCE_FIELDS]

# record_id: the WARC-Record-ID (none for ARC and files)
INGEST = pa.schema([*SOURCE_FIELDS, pa.field("record_id", pa.string()), pa.field("charset", pa.string()),
                    pa.field("html", pa.large_string())])
EXTRACT = pa.schema([*SOURCE_FIELDS, pa.field("title", pa.string()), pa.field("text", pa.large_string())])
LANGUAGE = pa.schema([*EXTRACT, pa.field("lang", pa.string()), pa.field("lang_score", pa.float64())])
QUALITY = pa.schema([*LANGUAGE, pa.field("pii_redactions", pa.int32())])
DEDUP = pa.schema([*QUALITY, pa.field("exact_hash", pa.string()), pa.field("minhash_cluster_id", pa.string()),
                   pa.field("dedup_kept", pa.bool_())])
SELECT = pa.schema([*DEDUP, pa.field("quality_score", pa.float32()), pa.field("perplexity", pa.float32())])
DECONTAMINATE = pa.schema([*SELECT, pa.field("contaminated", pa.bool_())])
