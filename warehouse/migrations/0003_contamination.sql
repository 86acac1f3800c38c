-- Version 3: benchmark items found in training documents, per decontaminate stage run.
-- Evaluation splits its accuracy into clean and contaminated items with this table.

CREATE TABLE contamination_hits (
    stage_run_id VARCHAR NOT NULL,
    doc_id       VARCHAR NOT NULL,
    task         VARCHAR NOT NULL,          -- the benchmark file's name without .jsonl
    item         INTEGER NOT NULL,          -- 0-based index of the item in its file
    n            SMALLINT NOT NULL,         -- the n-gram length that matched
    position     INTEGER NOT NULL,          -- the word position of the match in the document
    ngram        VARCHAR NOT NULL           -- the matching words, normalized
);

CREATE VIEW contamination_summary AS
SELECT stage_run_id, task, count(DISTINCT item) AS contaminated_items, count(DISTINCT doc_id) AS docs,
       count(*) AS hits
FROM contamination_hits GROUP BY ALL;
