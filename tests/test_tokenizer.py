import pytest

from trainer.tokenizer import CONTEXT_LENGTH, Tokenizer, train_tokenizer
from wit.core.errors import InputError

CAPTIONS = ["a red circle", "A photo of a blue square", "my drawing of a star. It is green!",
            "clip art: triangle (yellow)", "a large purple ring"] * 20


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CAPTIONS, vocab_size=400)


def test_encodes_to_context_length_with_start_end_and_padding(tok):
    ids = tok(["a red circle", "a blue square with a long tail"])
    assert ids.shape == (2, CONTEXT_LENGTH)
    assert (ids[:, 0] == tok.sot_id).all()
    for row in ids.tolist():
        end = row.index(tok.eot_id)
        assert all(t == tok.pad_id for t in row[end + 1:])
        assert tok.pad_id not in row[:end]
    assert tok.decode(ids[0].tolist()) == "a red circle"


def test_lowercases_and_learns_merges_from_the_captions(tok):
    assert tok(["A RED Circle"]).tolist() == tok(["a red circle"]).tolist()
    # frequent words become single tokens: SOT, 'a', 'red', 'circle', EOT
    assert (tok(["a red circle"])[0] != tok.pad_id).sum().item() == 5


def test_long_captions_are_truncated_but_keep_their_end_token(tok):
    ids = tok(["red " * 200])
    assert ids.shape == (1, CONTEXT_LENGTH)
    assert ids[0, -1].item() == tok.eot_id


def test_trimming_drops_only_padding_columns(tok):
    full = tok(["a red circle", "a photo of a blue square"])
    trimmed = tok(["a red circle", "a photo of a blue square"], trim_multiple=8)
    assert trimmed.shape == (2, 8)
    assert (full[:, :8] == trimmed).all() and (full[:, 8:] == tok.pad_id).all()


def test_save_and_load_round_trip(tok, tmp_path):
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    again = Tokenizer.load(path)
    assert again(CAPTIONS[:5]).tolist() == tok(CAPTIONS[:5]).tolist()
    assert again.vocab_size == tok.vocab_size


def test_a_broken_tokenizer_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"')
    with pytest.raises(InputError, match="tokenizer.json: not a tokenizers JSON file"):
        Tokenizer.load(str(bad))
