-- Version 9: how much of each evaluated item's prompt the context held (model/core.py crops a prompt longer than
-- the model's context from the left, as CORE does): tokens cut from its longest sequence (0: it fitted), and the
-- few-shot examples left whole.

ALTER TABLE eval_items ADD COLUMN cropped INTEGER;
ALTER TABLE eval_items ADD COLUMN shots_kept INTEGER;
