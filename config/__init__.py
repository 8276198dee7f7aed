"""Deployment configuration: settings, Celery wiring, retry policies, policy files."""
