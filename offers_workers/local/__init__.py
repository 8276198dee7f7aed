"""Local development only: the sandbox partners, embedded servers, the stack, demo, samples and bench.

A production worker imports nothing from here."""
