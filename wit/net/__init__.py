"""Talking to the web as a polite, guarded client: the network guard, name lookups, reading responses,
robots.txt. Above the core, below the jobs that fetch (`pipelines`, `queries`)."""

from wit import __version__

USER_AGENT = f"wit/{__version__} (+https://github.com/wit-dataset/wit; image-text dataset builder)"
