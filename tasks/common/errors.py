"""Operational errors: a failed run that the user fixes outside the code (a missing file, an
unreachable host, a bad token, wrong credentials, a full disk). The command line prints them as
one line naming the cause and the fix, and the traceback only with --debug or in a log file
(tasks/cli.py); a bug (any other exception) keeps its traceback."""

from __future__ import annotations

import errno
import socket
import sys
import traceback
import urllib.error
from pathlib import Path

# Fixes for the failure labels of tasks/common/fetch.py, by label or label prefix.
FETCH_FIXES = {
    "not_found": "check the path in the params file",
    "connection_error": "the host is unreachable: check the URL and the network",
    "timeout": "the host did not answer in time: check the network or raise download.timeout_s",
    "http_404": "check the URL in the params file (or the link list: links expire)",
    "http_5": "the host failed: rerun later (committed shards are kept)",
    "http_429": "the host is rate-limiting: rerun later or lower download.threads",
    "incomplete_transfer": "the connection kept dropping: rerun (the download resumes)",
}


class OperationalError(Exception):
    """An error whose message already names the cause and the fix."""


def _fetch_fix(reason: str) -> str:
    for key, fix in FETCH_FIXES.items():
        if reason == key or (key.endswith("_5") and reason.startswith(key)):
            return fix
    return ""


def one_line(err: BaseException) -> str | None:
    """The one-line message of an operational error, or None for anything else (a bug)."""
    reason = getattr(err, "reason", None)
    if isinstance(err, OperationalError):
        fix = _fetch_fix(reason) if isinstance(reason, str) else ""
        text = str(err)
        return f"{text}: {fix}" if fix and fix not in text else text
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return (f"no space left on the device{where}: free space, or point download.scratch_dir "
                f"(archives) or TMPDIR (shards) at a larger disk")
    if isinstance(err, FileNotFoundError):
        return f"file not found: {err.filename or err}: check the path in the params file"
    if isinstance(err, PermissionError):
        return f"permission denied: {err.filename or err}: check the file's owner and mode"
    if isinstance(err, (urllib.error.URLError, ConnectionError, socket.gaierror)):
        return f"cannot reach a host ({err}): check the URL and the network"
    name = type(err).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ("no S3 credentials: export MB_S3_ACCESS_KEY and MB_S3_SECRET_KEY "
                "(or run make services-up for the local S3)")
    if name == "EndpointConnectionError":
        return f"cannot reach S3 ({err}): check MB_S3_ENDPOINT and that the server is up"
    if name == "ClientError":
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return (f"S3 refused the credentials ({code}): check MB_S3_ACCESS_KEY and "
                    f"MB_S3_SECRET_KEY, and that the key may write to storage.bucket")
        if code in ("NoSuchBucket",):
            return f"S3 bucket missing ({err}): create it or set storage.bucket"
    return None


def report(err: BaseException, debug: bool, log: Path | None) -> int:
    """Print an operational error as one line on stderr (traceback with --debug, and in `log`)
    and return exit status 1; re-raise anything else."""
    line = one_line(err)
    if line is None:
        raise err
    text = "".join(traceback.format_exception(err))
    if debug:
        sys.stderr.write(text)
    where = ""
    if log is not None:
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(text)
            where = f" (traceback: {log})"
        except OSError:
            pass
    print(f"error: {line}{where}", file=sys.stderr)
    return 1
