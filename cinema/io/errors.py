"""The error a user can fix: bad input files, options or configs.

`InputError` is a `ValueError` (code that catches ValueError keeps working); the command line prints it as one line
naming the file and exits with status 2, the convention of argparse for usage errors. Any other failure exits with
status 1 and `cinema --debug ...` shows its traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with the user's input, options or config that the user can fix; nothing has been written."""
