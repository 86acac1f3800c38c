-- Version 4: one row per scored benchmark item, per evaluate stage run (model/evaluate.py's items.parquet).

CREATE TABLE eval_items (
    stage_run_id VARCHAR NOT NULL,
    task         VARCHAR NOT NULL,          -- the benchmark file's name without .jsonl
    item         INTEGER NOT NULL,          -- 0-based index of the item in its file (contamination_hits.item)
    position     INTEGER NOT NULL,          -- its place in the task's seeded order
    kind         VARCHAR NOT NULL,          -- multiple_choice, schema, language_modelling
    prediction   INTEGER NOT NULL,          -- the chosen option (language modelling: 1 when reproduced)
    gold         INTEGER NOT NULL,
    correct      BOOLEAN NOT NULL,
    losses       DOUBLE[]                   -- mean cross-entropy (nats) of each option over its scored span
);
