-- Version 7: one row per (document, item) found, with how much of the item the document holds (the share of one
-- item segment's n-grams, 1.0 for a short item found whole) and which segment matched (full, prompt, listing,
-- prompt_listing, question, blank); position and ngram are the first matching n-gram's.

ALTER TABLE contamination_hits ADD COLUMN score DOUBLE;
ALTER TABLE contamination_hits ADD COLUMN segment VARCHAR;
