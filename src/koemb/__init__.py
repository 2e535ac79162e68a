"""koemb: teach a multilingual text-embedding model a language's own vocabulary."""

__version__ = "0.1.0"
