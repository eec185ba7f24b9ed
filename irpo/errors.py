"""The one base class of the errors a user can fix, and so the only ones the CLI prints plainly.

Every stage raises a subclass (CardError, TaskError, ModelError, SamplingError, PublishError,
PairDataError, EvalError) whose message names the bad input and the fix; `irpo.command`
turns any of them into one clean line at the single CLI boundary. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class IrpoError(Exception):
    """A problem with the user's input, run folder or environment; the message says what to do."""
