-- Version 7: each contamination hit says how much of the item the document holds (the share of one item
-- segment's n-grams, 1.0 for a short item found whole) and which segment matched (full, listing, question, blank).

ALTER TABLE contamination_hits ADD COLUMN score DOUBLE;
ALTER TABLE contamination_hits ADD COLUMN segment VARCHAR;
