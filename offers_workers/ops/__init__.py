"""What operators and on-call use: reports, health, metrics, the synthetic journey and the CLI."""
