"""Serving logic: protocol in, engine calls, protocol out."""
