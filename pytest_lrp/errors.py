"""Exceptions whose text is shown to the user as-is, without a traceback."""


class LrpUsageError(Exception):
    """Bad configuration: a rule file, model or input file that cannot be used.

    The message is one line naming the file and what is wrong with it.
    """


class LrpCheckFailed(AssertionError):
    """A property (conservation, ...) does not hold; the message explains the numbers."""
