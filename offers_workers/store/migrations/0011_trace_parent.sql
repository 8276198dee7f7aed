-- The W3C traceparent of the offer's intake span (NULL when the fleet ran untraced): the recovery
-- sweep's re-send and a dead-letter replay resume the offer's own trace from it; `offers show` prints it.
ALTER TABLE offers ADD COLUMN trace_parent text;
