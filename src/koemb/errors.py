"""User-facing errors.

A `UserError` is a mistake in the user's input (a file, a field, a flag). The CLI prints its
message as one paragraph and exits non-zero, without a traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, described well enough to fix without reading code."""
