"""Celery glue: the app and one thin task module per stage. Logic lives in ``offers_workers``."""
