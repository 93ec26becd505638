"""The one base class of the errors a user can fix: bad options, inputs, folders or files.

The CLI prints a `WitError` as one line naming what is wrong; anything else is
a bug and keeps its traceback.
"""


class WitError(Exception):
    """Something the user can fix; the message names the file, row, path or flag and the reason."""


class InputError(WitError):
    """An input (file, folder, glob) that cannot be used as given."""


class FolderBusy(WitError):
    """Another process is writing into the same folder."""
