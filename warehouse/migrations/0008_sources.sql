-- Version 8: sources. Drops are recorded per source (NULL: runs from before sources, and counted notes), and
-- stage_sources holds each stage run's figures per source: documents in and out, and at tokenize the training
-- tokens, the mixture's target and realised shares, and the passes (epochs) training makes over the source.

ALTER TABLE drops ADD COLUMN source VARCHAR;

CREATE TABLE stage_sources (
    stage_run_id  VARCHAR NOT NULL,
    stage         VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,
    docs_in       BIGINT,
    docs_out      BIGINT,
    tokens        BIGINT,         -- tokenize: training tokens of the source's documents (each once)
    target_share  DOUBLE,         -- tokenize: the configured weight, if any
    share         DOUBLE,         -- tokenize: its realised share of a pass over the mixture
    epochs        DOUBLE,         -- tokenize: times a pass uses the source's tokens
    val_docs      BIGINT,         -- tokenize: documents held out for validation
    PRIMARY KEY (stage_run_id, source)
);
