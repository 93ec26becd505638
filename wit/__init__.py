"""wit: rebuild CLIP's WebImageText dataset construction and train CLIP on it."""

__version__ = "0.1.0"
USER_AGENT = f"wit/{__version__} (+https://github.com/wit-dataset/wit; image-text dataset builder)"
