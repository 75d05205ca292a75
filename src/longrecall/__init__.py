"""longrecall: long-range memory in sequence models, on one ruler."""

__version__ = "0.1.0"
