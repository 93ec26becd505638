"""The one base class of the errors a user can fix: bad options, inputs, folders or files.

The CLI prints a `WitError` as one line naming what is wrong; anything else is
a bug and keeps its traceback.
"""


from typing import Optional


def cause_of(e: Optional[BaseException], kind: type | tuple[type, ...]) -> Optional[BaseException]:
    """The first exception of `kind` in `e`'s chain (`e` itself, its cause or context, ...): a runner wraps
    a worker's exception in its own, with the original as the context."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, kind):
            return e
        e = e.__cause__ or e.__context__
    return None


class WitError(Exception):
    """Something the user can fix; the message names the file, row, path or flag and the reason."""


class InputError(WitError):
    """An input (file, folder, glob) that cannot be used as given."""


class FolderBusy(WitError):
    """Another process is writing into the same folder."""
