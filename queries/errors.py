"""The one error type of the query builder: bad input, named by file."""


class QueryInputError(ValueError):
    """An input file that cannot be used; the message starts with its path."""
