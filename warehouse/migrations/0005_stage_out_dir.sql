-- Version 5: where a stage run writes, known when it starts, so that readers (the dashboard) can follow a stage
-- that is still running: training's metrics.jsonl grows there long before the stage records anything.

ALTER TABLE stage_runs ADD COLUMN out_dir VARCHAR;
