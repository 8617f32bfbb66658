"""`python -m unimm ...` is the `unimm` command (benchmarks run each job in its own process)."""

from .cli.main import main

main()
