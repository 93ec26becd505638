"""wit's bottom layer: what every part of the project shares (errors, options, text forms, file I/O, the shard
format, the Beam runner's options). It imports nothing else of the project."""
