-- Version 2: every fetch of every crawl, archived or not, with the validators a recrawl sends back.

CREATE TABLE crawl_log (
    stage_run_id   VARCHAR NOT NULL,
    job            VARCHAR NOT NULL,        -- the crawl job: a hash of its seeds and scope
    url            VARCHAR NOT NULL,
    depth          INTEGER,
    status         INTEGER,
    outcome        VARCHAR NOT NULL,        -- archived | not_modified | unchanged | redirect | robots_disallowed | …
    detail         VARCHAR,
    bytes          BIGINT,
    content_type   VARCHAR,
    warc_file      VARCHAR,
    warc_offset    BIGINT,
    etag           VARCHAR,
    last_modified  VARCHAR,
    payload_digest VARCHAR,
    redirect_to    VARCHAR,
    fetched_at     TIMESTAMPTZ,
    seconds        DOUBLE
);
