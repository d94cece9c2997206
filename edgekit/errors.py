"""The one exception type for user errors.

Anything the user can fix (a bad path, a bad recipe key, a checkpoint of the wrong model) raises
`EdgekitError`; the CLI prints its message as one line on stderr and exits with status 2, no
traceback. Everything else is a bug and keeps its traceback.
"""


class EdgekitError(Exception):
    """A user error: the message says what is wrong and what to do."""
