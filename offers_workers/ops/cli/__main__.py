"""``python -m offers_workers.ops.cli``: the same CLI as the ``offers-workers`` command."""

from offers_workers.ops.cli import main

main()
