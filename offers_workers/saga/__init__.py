"""The saga: intake, the stages, cancellation, dead letters, recovery and the audit trail, as plain functions."""
