"""Regenerating CLIP's 500,000-query list: Wikipedia words and bigrams, popular titles and WordNet lemmas."""
