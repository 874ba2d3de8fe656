"""Exceptions whose text is shown to the user as-is, without a traceback."""


class LrpUsageError(Exception):
    """Bad configuration: a rule file, model or input file that cannot be used.

    The message is one line naming the file and what is wrong with it.
    """


class LrpCheckFailed(AssertionError):
    """A property (conservation, ...) does not hold; the message explains the numbers.

    This is the failure a rule's ``xfail`` expects.
    """


class LrpBeyondExpectation(AssertionError):
    """A failure no ``xfail`` flag excuses: a non-finite heatmap, or an error above the
    rule's ``max_error`` ceiling (known leaks are tolerated, explosions are not)."""


def shown(path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    import os

    text = str(path)
    try:
        relative = os.path.relpath(text)
    except ValueError:  # another drive on Windows
        return text
    return text if relative.startswith("..") else relative
