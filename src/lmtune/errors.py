"""User-facing errors: the CLI turns these into one paragraph and exit code 2, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, bad data, incompatible model/task).

    The message must say where (file, line/row, field) and what to do about it.
    """
