"""Serving models from other OpenAI-compatible servers: the `remote` engine, its upstream pool and proxy."""
