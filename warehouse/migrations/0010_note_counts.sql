-- Version 10: what a funnel row counts. Drops are always documents; a note (counted, not dropped) may count other
-- things: WARC records that are not documents (record_request…), links a crawl met (link_max_pages…), archives
-- read as one gzip stream. Earlier rows get the unit their reason's prefix names (tasks/stage.py: note_counts).

ALTER TABLE drops ADD COLUMN counts VARCHAR DEFAULT 'documents';
UPDATE drops SET counts = CASE
    WHEN dropped THEN 'documents'
    WHEN starts_with(reason, 'link_') THEN 'links'
    WHEN starts_with(reason, 'record_') THEN 'records'
    WHEN reason = 'single_gzip_stream' THEN 'files'
    ELSE 'documents' END;
