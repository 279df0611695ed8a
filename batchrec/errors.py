"""The one exception type for problems the user can fix.

A `UserError` becomes one line on stderr and exit code 2 (bad input or config: a CronJob
must not retry it). Anything else is a bug or a transient fault and exits non-zero
otherwise, which a CronJob may retry.
"""

EXIT_USER_ERROR = 2


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
