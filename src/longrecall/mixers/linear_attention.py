"""Placeholder: this mechanism is being written (issue 5)."""
