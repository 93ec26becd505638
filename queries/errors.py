"""The one error type of the query builder: bad input, named by file."""

from wit.core.errors import InputError


class QueryInputError(InputError):
    """An input file that cannot be used; the message starts with its path."""
