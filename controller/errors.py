"""Error types of clln.

Every error the project raises derives from :class:`CllnError`. A
:class:`UserError` is a mistake the user can fix (bad file, unknown key, a
limit exceeded, a device that is not there): the command line prints its
message as one line and exits with code 2, without a traceback.
"""

from __future__ import annotations


class CllnError(Exception):
    """Root of every error raised by clln."""


class UserError(CllnError):
    """A mistake in what the user asked for; reported as one line, exit code 2."""


class ProtocolError(UserError):
    """A protocol, bench or edge-list file is malformed or inconsistent."""


class LimitError(UserError):
    """A requested voltage or current exceeds a hardware limit; nothing was sent."""


class NetworkError(UserError):
    """The network cannot be solved as given (floating or disconnected parts)."""


class RunNotFoundError(UserError):
    """No run with the requested id exists in the run store."""


class Interrupted(CllnError):
    """A command stopped by Ctrl-C or SIGTERM; the backend was made safe. Exit code 130."""


class BenchFault(CllnError):
    """The bench (real or simulated) could not complete a measurement mid-run, e.g. a
    simulated network whose operating point does not converge: the run pauses, the
    backend is made safe, and the run can be resumed."""
