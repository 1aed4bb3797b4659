"""Entry point: python -m cli (what the ./mydocker launcher runs)."""

from cli.main import main

main()
