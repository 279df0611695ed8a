"""The exception types that become one `error:` line and a meaningful exit code.

A `UserError` is bad input or config: exit code 2, and a CronJob must not retry it.
A `RetryableError` is a fault of the moment (a stalled or lost worker): exit code 75
(EX_TEMPFAIL), and the same command may simply be run again. Anything else is a bug or an
unclassified fault and exits non-zero otherwise, which a CronJob may retry.
"""

EXIT_USER_ERROR = 2
EXIT_RETRYABLE = 75


class UserError(Exception):
    """Bad input or configuration: say what, where, and how to fix it."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        parts = [what]
        if where:
            parts.append(f"(at {where})")
        msg = " ".join(parts)
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)


class RetryableError(Exception):
    """A run that could not finish now but may on a rerun; nothing was published."""
