"""Policy files for ``offers-workers policy load``."""
