"""wit: rebuild CLIP's WebImageText dataset construction and train CLIP on it."""

__version__ = "0.1.0"
