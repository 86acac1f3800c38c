-- The lineage warehouse, version 1: runs, stage runs, datasets and their edges, the drop funnel, metrics.

CREATE TABLE pipeline_runs (
    run_id        VARCHAR PRIMARY KEY,
    flow_run_id   VARCHAR,
    config_path   VARCHAR,
    config_json   VARCHAR NOT NULL,
    config_hash   VARCHAR NOT NULL,
    code_version  VARCHAR NOT NULL,
    trigger       VARCHAR NOT NULL,          -- manual | schedule | rerun
    stages        VARCHAR[],
    status        VARCHAR NOT NULL,          -- running | completed | failed | interrupted | crashed
    error         VARCHAR,
    host          VARCHAR,
    pid           INTEGER,
    started_at    TIMESTAMPTZ NOT NULL,
    ended_at      TIMESTAMPTZ
);

CREATE TABLE stage_runs (
    stage_run_id      VARCHAR PRIMARY KEY,
    run_id            VARCHAR NOT NULL,
    stage             VARCHAR NOT NULL,
    stage_key         VARCHAR NOT NULL,
    params_json       VARCHAR NOT NULL,
    params_hash       VARCHAR NOT NULL,
    code_version      VARCHAR NOT NULL,
    input_dataset_ids VARCHAR[],
    output_dataset_id VARCHAR,
    status            VARCHAR NOT NULL,      -- running | completed | failed | interrupted | crashed
    cache_hit         BOOLEAN NOT NULL DEFAULT false,
    error             VARCHAR,
    units             INTEGER,               -- Prefect tasks the stage was cut into
    units_resumed     INTEGER,               -- units a killed earlier attempt had already finished
    shards_out        INTEGER,
    docs_in           BIGINT,
    docs_out          BIGINT,
    bytes_in          BIGINT,                -- input files (ingest) or upstream Parquet shards
    bytes_out         BIGINT,                -- output Parquet shards
    seconds           DOUBLE,
    started_at        TIMESTAMPTZ NOT NULL,
    ended_at          TIMESTAMPTZ
);

CREATE TABLE datasets (
    dataset_id    VARCHAR PRIMARY KEY,
    stage         VARCHAR NOT NULL,         -- 'source' for the raw input files
    stage_key     VARCHAR,
    uri           VARCHAR NOT NULL,
    format        VARCHAR NOT NULL,         -- parquet | warc | arrow | …
    fingerprint   VARCHAR NOT NULL,
    records       BIGINT,
    bytes         BIGINT,
    tokens        BIGINT,
    shards        INTEGER,
    created_by    VARCHAR,                  -- stage_run_id
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE dataset_files (
    dataset_id    VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    records       BIGINT,
    bytes         BIGINT,
    content_hash  VARCHAR,                  -- sha256 of a shard; size+mtime version of a raw input file
    PRIMARY KEY (dataset_id, path)
);

CREATE TABLE dataset_edges (
    parent_id     VARCHAR NOT NULL,
    child_id      VARCHAR NOT NULL,
    stage_run_id  VARCHAR,
    PRIMARY KEY (parent_id, child_id)
);

-- The funnel. dropped = false rows count kept records that carried a repaired defect (a null date, say).
CREATE TABLE drops (
    stage_run_id  VARCHAR NOT NULL,
    stage         VARCHAR NOT NULL,
    reason        VARCHAR NOT NULL,
    dropped       BOOLEAN NOT NULL,
    docs          BIGINT NOT NULL,
    bytes         BIGINT NOT NULL
);

CREATE TABLE metrics (
    run_id        VARCHAR NOT NULL,
    stage_run_id  VARCHAR,
    step          BIGINT,
    name          VARCHAR NOT NULL,
    value         DOUBLE,
    recorded_at   TIMESTAMPTZ NOT NULL
);
