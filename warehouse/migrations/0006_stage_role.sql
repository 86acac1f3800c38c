-- Version 6: what a stage run is for, as its stage declares it (tasks/stage.py, Stage.role): "collection",
-- "languages", "duplicates", "training", "evaluation" or none. The report and the dashboard find their sections by
-- role, so a stage added or renamed later needs no list kept in the warehouse code.

ALTER TABLE stage_runs ADD COLUMN role VARCHAR;

-- Runs recorded before stages declared a role: the stages that had these roles then.
UPDATE stage_runs SET role = CASE stage WHEN 'ingest' THEN 'collection' WHEN 'language' THEN 'languages'
    WHEN 'dedup' THEN 'duplicates' WHEN 'train' THEN 'training' WHEN 'evaluate' THEN 'evaluation' END;
