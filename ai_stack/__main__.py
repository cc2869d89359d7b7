"""`python -m ai_stack` runs the CLI."""

from __future__ import annotations

from ai_stack.cli import main

main()
