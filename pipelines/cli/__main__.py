"""`python -m pipelines.cli` runs `ctp`."""

from pipelines.cli import main

main()
