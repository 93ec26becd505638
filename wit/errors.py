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


def user_error_under(e: Optional[BaseException]) -> Optional[BaseException]:
    """What a user can fix under `e`'s chain: a WitError, or else a file the system refused (an OSError that
    names its file: a permission, a full disk); None for a bug."""
    ours = cause_of(e, WitError)
    if ours is not None:
        return ours
    refused = cause_of(e, OSError)
    return refused if refused is not None and getattr(refused, "filename", None) else None
