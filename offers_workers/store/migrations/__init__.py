"""Versioned SQL migrations, applied in order by ``offers-workers db migrate``."""
