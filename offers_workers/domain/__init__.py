"""The marketplace's rules: the payload, the offer states, validation and the error kinds. No Celery, no I/O."""
