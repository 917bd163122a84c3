"""`python -m mixerlab.cli ...`, as the `mixerlab` command."""

from mixerlab.cli import main

main()
