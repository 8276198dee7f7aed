"""offers-workers: the offer-submission saga, as plain functions over Postgres and partner adapters.

Nothing in this package imports Celery; the task glue lives in ``tasks/``.
"""
