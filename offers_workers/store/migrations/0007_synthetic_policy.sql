-- The synthetic journey brings its own maker and listing (`offers-workers synthetic run`, the
-- nightly check). They are marked here: a probe's, not a real maker's, left out wherever makers
-- and listings are shown to people. `policy load` never sets or clears the mark.
ALTER TABLE makers ADD COLUMN synthetic boolean NOT NULL DEFAULT false;
ALTER TABLE listings ADD COLUMN synthetic boolean NOT NULL DEFAULT false;
