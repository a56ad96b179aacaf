"""The one exception type for mistakes a user can fix.

The CLI prints a UserError as a single line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the bad value and what would be accepted."""


class TrainingDiverged(Exception):
    """The loss or gradient went NaN/inf; the last good checkpoint is kept."""
