"""A flow run that fails for a reason the user fixes outside the code ends Failed with one line
naming the cause and the fix as its state message (what the UI, `prefect flow-run inspect` and
a parent flow show); the traceback goes to the run's log only. Bugs keep Prefect's own handling.
The command line does the same on stderr (tasks/common/errors.py)."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.states import Failed, State

from infra.config import ConfigError
from tasks.common.errors import OperationalError, one_line

# Refusals whose message already names the fields or the fix on its first line: bad params,
# sections that disagree (the preflight), a plan over budget (the plan follows on later lines).
STOPS = (ConfigError,)


class StepFailed(OperationalError):
    """A step's own flow run did not complete; the message is that run's one line."""


def failed_state(err: BaseException, stops: tuple[type[BaseException], ...] = ()) -> State | None:
    """Failed(message=the one line) for an operational error or one of `stops` (after logging
    the traceback), None for anything else."""
    line = one_line(err)
    if line is None and isinstance(err, STOPS + stops):
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if line is None:
        return None
    get_run_logger().error("%s", line, exc_info=(type(err), err, err.__traceback__))
    return Failed(message=line)
