"""Readers for the text, pair and evaluation formats koemb consumes."""
