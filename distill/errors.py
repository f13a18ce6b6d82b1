"""The one exception type for bad user input.

Every check on a path, file, dataset name, gin value or checkpoint raises
`UserError` with a single line that names the offending thing and the fix;
entry points print that line instead of a traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a one-line message naming the thing and the fix."""
