"""Regenerating CLIP's 500,000-query list (see issue #4)."""
