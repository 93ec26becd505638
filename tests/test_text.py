from wit.core.text import clean_caption, match_form


def test_clean_caption_keeps_text_but_fixes_whitespace_and_controls():
    assert clean_caption("  A\u200b red\tcircle\n\x00 ") == "A red circle"
    assert clean_caption("Cafe\u0301") == "Café"


def test_match_form_is_casefolded_words():
    assert match_form("Red-Circle!  on a STRIPED_background") == "red circle on a striped background"
    assert match_form("ﬁsh") == "fish"  # NFKC ligature
    assert match_form("...") == ""
