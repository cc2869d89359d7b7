"""Engines: one module per backend, imported only when a model of that engine loads (see catalog.ENGINES)."""
