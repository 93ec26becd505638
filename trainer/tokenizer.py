"""Byte-level BPE trained on the dataset's own captions (CLIP: lower-cased BPE,
start/end tokens, 77-token context), stored as one `tokenizer.json` that travels
with the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from tokenizers import Regex
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from wit.core import fileio
from wit.core.errors import InputError
from wit.core.options import Options, option

PAD, SOT, EOT = "<pad>", "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class TokenizerOptions(Options):
    shards: tuple[str, ...] = option(help="tar shards: glob or directory")
    out: str = option(help="tokenizer.json to write")
    vocab_size: int = option(49408, help="tokens in the vocabulary, special ones included")
    min_frequency: int = option(2, help="occurrences a merge needs")

    def check(self) -> None:
        if self.vocab_size < 259:
            self.refuse("vocab_size", "must hold the 256 bytes and 3 special tokens (at least 259)")


def train_tokenizer(captions: Iterable[str], vocab_size: int = 49408, min_frequency: int = 2) -> "Tokenizer":
    bpe = HFTokenizer(models.BPE())
    # Runs of whitespace fold to one space, as OpenCLIP's tokenizer wrapper folds them before tokenizing, so an
    # exported model reads a caption as wit read it.
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, SOT, EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(captions, trainer=trainer)
    return Tokenizer(bpe)


class Tokenizer:
    """Captions -> (N, 77) int64 ids: SOT, the caption truncated to fit, EOT, then padding."""

    def __init__(self, bpe: HFTokenizer, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id = (bpe.token_to_id(t) for t in (PAD, SOT, EOT))
        if None in (self.pad_id, self.sot_id, self.eot_id):
            raise InputError(f"tokenizer lacks the special tokens {PAD}, {SOT}, {EOT}")
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{SOT} $A {EOT}", special_tokens=[(SOT, self.sot_id), (EOT, self.eot_id)])
        bpe.enable_truncation(max_length=context_length)  # counts the added SOT/EOT, so EOT always survives
        bpe.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=context_length)
        self.bpe = bpe

    @property
    def vocab_size(self) -> int:
        return self.bpe.get_vocab_size()

    def __call__(self, texts: Sequence[str], trim_multiple: int = 0) -> torch.Tensor:
        """With trim_multiple, drops the padding columns no caption reaches (rounded up to a multiple):
        the text tower is causal and read at EOT, so its output is unchanged and its cost follows
        the captions' real length rather than 77."""
        ids = torch.tensor([e.ids for e in self.bpe.encode_batch(list(texts))], dtype=torch.long)
        if trim_multiple:
            used = int((ids != self.pad_id).sum(dim=1).max())
            ids = ids[:, : min(self.context_length, -(-used // trim_multiple) * trim_multiple)]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.bpe.decode(list(ids), skip_special_tokens=True).strip()

    def to_str(self) -> str:
        return self.bpe.to_str()

    def save(self, path: str) -> None:
        fileio.write_bytes(path, self.to_str().encode())

    @staticmethod
    def from_str(text: str) -> "Tokenizer":
        return Tokenizer(HFTokenizer.from_str(text))

    @staticmethod
    def load(path: str) -> "Tokenizer":
        text = fileio.read_bytes(path).decode("utf-8", errors="replace")
        try:
            bpe = HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise InputError(f"{path}: not a tokenizers JSON file ({e})") from None
        return Tokenizer(bpe)
