"""The one base class of the errors a user can fix, and so the only ones the CLI prints plainly.

Each subclass is named for what the user must fix, and its message names the input and the fix:
the card (CardError, and SettingError for a value this data or machine cannot use), a task or its
data (TaskError), a model (ModelError), the run folder (RunFolderError, RecordError), a missing
package (NotInstalledError), the Ray cluster (ClusterError), the Hub (HubError), the launch
(LaunchError). `irpo.command` turns any of them into one clean line at the single CLI boundary.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class IrpoError(Exception):
    """A problem with the user's input, run folder or environment; the message says what to do."""


class SettingError(IrpoError, ValueError):
    """A card key or flag this data, machine or launch cannot work with; the message names the key."""


class RunFolderError(IrpoError, RuntimeError):
    """The run folder lacks what a stage reads (the message names the command that makes it), or
    holds a part made by an earlier irpo or with other settings (set it aside and build it again)."""


class NotInstalledError(IrpoError, RuntimeError):
    """A package the chosen settings need; the message says what to install, or which setting needs none."""


class ClusterError(IrpoError, RuntimeError):
    """The Ray cluster cannot be reached, is too small, or cannot see the run's files."""
