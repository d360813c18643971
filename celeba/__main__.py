"""`python -m celeba COMMAND ...`: the umbrella command without an installed console script."""

from celeba.cli import main

main()
