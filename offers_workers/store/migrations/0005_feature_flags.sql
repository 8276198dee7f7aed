-- Run-time feature flags (the runbook's), read by every worker through a short cache.
CREATE TABLE feature_flags (
    name        text        PRIMARY KEY,
    enabled     boolean     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_by  text        NOT NULL DEFAULT 'migration'
);
INSERT INTO feature_flags (name, enabled) VALUES
    ('OFFER_SUBMISSION_ENABLED', true),
    ('REAL_TIME_VALIDATION', true),
    ('SOFT_LAUNCH_MODE', false);
