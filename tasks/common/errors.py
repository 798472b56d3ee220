"""Operational errors: a failed run that the user fixes outside the code (a missing file, an
unreachable host, a bad token, wrong credentials, a full disk). The command line prints them as
one line naming the cause and the fix, without a traceback (tasks/cli.py)."""

from __future__ import annotations


class OperationalError(Exception):
    """An error whose message already names the cause and the fix."""
