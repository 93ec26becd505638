"""Matching captions against the query list with a word-level Aho-Corasick automaton.

Queries and captions are both reduced to `match_form` (casefolded words joined
by single spaces), so a query matches exactly where its words occur one after
another in the caption: "circles" never matches "circle", and overlapping hits
are all reported ("red circle" and "circle").

A caption's matched ids come in reading order: by the word where the match
ends, longer matches first at the same word, each id once. ("a red circle" with
queries 0 "circle", 1 "red circle", 2 "red" gives (2, 1, 0).)

The automaton's alphabet is the queries' vocabulary rather than characters,
and its goto, failure and output links live in numpy arrays walked by
numba-compiled kernels over a whole batch of captions at once. Per-caption and
per-hit Python work is what holds back a character automaton such as
pyahocorasick (bench/match.py keeps it as the baseline; figures in
bench/RESULTS.md); a batch here never returns to Python until every caption in
it is matched.

`MatchQueries` is the job's stage: candidates in, a `Pair` out for each one
whose caption matches a query, counted as `matched` and `unmatched`.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import apache_beam as beam
import numba
import numpy as np
import pyarrow as pa

from pipelines import querylist
from pipelines.sizing import MIX
from pipelines.counters import CountingDoFn, count_in, counter
from wit.core.runner import relax_gc
from wit.core.text import match_form

_NO = -1
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_LONG = np.uint64(0xFF << 56)  # tags hashed keys of words longer than 7 bytes


def _byte_table() -> np.ndarray:
    """Byte -> byte of the match form, 0 for a separator.

    On ASCII text this is exactly `match_form` (NFKC is the identity there, casefold is lower(),
    and only [A-Za-z0-9] are word characters). Non-ASCII captions are put through `match_form`
    in Python first; their forms hold only word characters and spaces, which this table keeps
    and splits on, so UTF-8 bytes >= 0x80 count as word bytes.
    """
    table = np.zeros(256, np.uint8)
    for c in b"abcdefghijklmnopqrstuvwxyz0123456789":
        table[c] = c
    for c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        table[c] = c + 32
    table[128:] = np.arange(128, 256, dtype=np.uint8)
    return table


_TABLE = _byte_table()


# ---------------------------------------------------------------- kernels
#
# Two passes over a batch: bytes -> word ids, then word ids -> query ids. A word is keyed by its
# bytes packed into an integer when it has at most 7 (most words: exact, nothing to verify), else by
# an FNV-1a hash tagged in the top byte and checked against the vocabulary's bytes. Hash tables are
# flat arrays of (key, value) pairs, so a probe touches one cache line. Most words have no edge to
# the next one, and that "no" is answered by a 64-bit filter in the node's own record, then by a
# Bloom filter that keeps both of its bits in one word, before the edge table is touched.
#
# Node w + 1 is the one-word node of vocabulary word w (whether or not a query starts with it: one
# that none starts with simply has no children and no output), so leaving the root needs no lookup.
# A node's record is [fail, out, first, end, filter_lo, filter_hi, term, stamp]: its failure link,
# the nearest node on its failure chain at which some query ends (or -1), the range of term_ids
# ending at the node itself, its children's words as a 64-bit filter, term_ids[first] (the query that
# ends there, nearly always the only one), and the last caption whose ids it gave. 32 bytes: one
# cache line.
#
# Each id once per caption: an id ends at one node only, and once a node has given its ids, so has
# every node on its out chain; so the walk stops at the first node stamped with the current caption.

FAIL, OUT, FIRST, END, FILTER, TERM, STAMP = 0, 1, 2, 3, 4, 6, 7
BLOOM_SHIFT = 4  # Bloom filter words = edge table slots / 2**BLOOM_SHIFT: 5 to 11 bits an edge


@numba.njit(cache=True, inline="always")
def _mixed(key):
    return np.uint64(key) * MIX


@numba.njit(cache=True)
def _pair_table(keys, values, bits, empty):
    """Open addressing with linear probing: table[2s] is a key (or `empty`), table[2s+1] its value."""
    table = np.empty(2 << bits, keys.dtype)
    table[0::2] = empty
    mask = (1 << bits) - 1
    for i in range(keys.shape[0]):
        s = np.int64(_mixed(keys[i]) >> np.uint64(64 - bits))
        while table[2 * s] != empty:
            s = (s + 1) & mask
        table[2 * s] = keys[i]
        table[2 * s + 1] = values[i]
    return table


@numba.njit(cache=True, inline="always")
def _get(table, bits, key, empty):
    mask = (1 << bits) - 1
    s = np.int64(_mixed(key) >> np.uint64(64 - bits))
    while True:
        k = table[2 * s]
        if k == key:
            return np.int64(table[2 * s + 1])
        if k == empty:
            return np.int64(_NO)
        s = (s + 1) & mask


@numba.njit(cache=True, inline="always")
def _bloom_probe(h, bits):
    """(word index, bit a, bit b) of a key's mixed hash."""
    six = np.uint64(63)
    return np.int64(h >> np.uint64(64 - bits)), (h >> np.uint64(8)) & six, (h >> np.uint64(14)) & six


@numba.njit(cache=True)
def _bloom(keys, bits):
    bloom = np.zeros(1 << bits, np.uint64)
    for key in keys:
        w, a, b = _bloom_probe(_mixed(key), bits)
        bloom[w] |= (np.uint64(1) << a) | (np.uint64(1) << b)
    return bloom


@numba.njit(cache=True, inline="always")
def _goto(node, wid, nodes, edge_table, edge_bits, bloom, bloom_bits, n_words):
    """Child of `node` along word `wid`, or -1."""
    if node == 0:
        return np.int64(wid + 1)
    if (nodes[node, FILTER + ((wid >> 5) & 1)] >> (wid & 31)) & 1 == 0:
        return np.int64(_NO)
    key = np.int64(node) * n_words + wid
    w, a, b = _bloom_probe(_mixed(key), bloom_bits)
    if (bloom[w] >> a) & (bloom[w] >> b) & np.uint64(1) == 0:
        return np.int64(_NO)
    return _get(edge_table, edge_bits, key, -1)


@numba.njit(cache=True)
def _link(order, parent, edge_word, nodes, edge_table, edge_bits, bloom, bloom_bits, n_words):
    """Classic Aho-Corasick construction, in breadth-first order, of the fail and out links."""
    for u in order:
        p = parent[u]
        if p <= 0:
            continue
        f = nodes[p, FAIL]
        while True:
            c = _goto(f, edge_word[u], nodes, edge_table, edge_bits, bloom, bloom_bits, n_words)
            if c != _NO:
                nodes[u, FAIL] = c
                break
            if f == 0:
                break
            f = nodes[f, FAIL]
        f = nodes[u, FAIL]
        if f != 0:
            nodes[u, OUT] = f if nodes[f, END] > nodes[f, FIRST] else nodes[f, OUT]


@numba.njit(cache=True, inline="always")
def _long_key(data, start, stop, table):
    """Key of a word of 8 bytes or more: FNV-1a of its match-form bytes, tagged in the top byte."""
    h = _FNV_OFFSET
    for t in range(start, stop):
        h = (h ^ np.uint64(table[data[t]])) * _FNV_PRIME
    return (h >> np.uint64(8)) | _LONG


@numba.njit(cache=True)
def _vocab_keys(word_data, word_start, table):
    """The key of each vocabulary word, as _word_ids computes it for a caption's word."""
    keys = np.empty(word_start.shape[0] - 1, np.uint64)
    for w in range(keys.shape[0]):
        start, stop = word_start[w], word_start[w + 1]
        if stop - start <= 7:
            packed = np.uint64(0)
            for t in range(start, stop):
                packed |= np.uint64(table[word_data[t]]) << np.uint64(8 * (t - start))
            keys[w] = packed
        else:
            keys[w] = _long_key(word_data, start, stop, table)
    return keys


@numba.njit(cache=True)
def _word_ids(data, offsets, table, words, skip_high):
    """Each caption's words as vocabulary ids (-1: in no query); caption i has wids[woff[i]:woff[i+1]].
    With `skip_high`, a caption holding a byte >= 0x80 gets no words and is flagged in `high`: only
    ASCII reduces to its match form byte by byte."""
    word_table, word_bits, word_data, word_start = words
    n_caps = offsets.shape[0] - 1
    wids = np.empty(data.shape[0] // 2 + n_caps + 1, np.int32)
    woff = np.zeros(n_caps + 1, np.int64)
    high = np.zeros(n_caps, np.bool_)
    n = 0
    for i in range(n_caps):
        j, hi = offsets[i], offsets[i + 1]
        if skip_high:
            seen = np.uint8(0)
            for t in range(j, hi):
                seen |= data[t]
            if seen >= 128:
                high[i] = True
                woff[i + 1] = n
                continue
        while j < hi:
            c = table[data[j]]
            j += 1
            if c == 0:
                continue
            start = j - 1
            packed, shift = np.uint64(c), np.uint64(8)
            while j < hi:
                c = table[data[j]]
                if c == 0:
                    break
                if shift < 56:
                    packed |= np.uint64(c) << shift
                    shift += np.uint64(8)
                j += 1
            length = j - start
            if length <= 7:
                wid = _get(word_table, word_bits, packed, np.uint64(0))
            else:
                wid = _get(word_table, word_bits, _long_key(data, start, j, table), np.uint64(0))
                if wid != _NO:
                    w0 = word_start[wid]
                    if word_start[wid + 1] - w0 != length:
                        wid = _NO
                    else:
                        for t in range(length):
                            if word_data[w0 + t] != table[data[start + t]]:
                                wid = _NO
                                break
            wids[n] = wid
            n += 1
        woff[i + 1] = n
    return wids, woff, high


@numba.njit(cache=True)
def _splice(wids, woff, forms_wids, forms_woff, which):
    """The batch's word ids with caption which[k]'s taken from the k-th of `forms` (its match form)."""
    n_caps = woff.shape[0] - 1
    out = np.empty(woff[n_caps] + forms_woff[-1], np.int32)
    out_off = np.zeros(n_caps + 1, np.int64)
    n, k = 0, 0
    for i in range(n_caps):
        if k < which.shape[0] and which[k] == i:
            for j in range(forms_woff[k], forms_woff[k + 1]):
                out[n] = forms_wids[j]
                n += 1
            k += 1
        else:
            for j in range(woff[i], woff[i + 1]):
                out[n] = wids[j]
                n += 1
        out_off[i + 1] = n
    return out, out_off


@numba.njit(cache=True)
def _walk(wids, woff, i, stamp0, ids, res_off, nodes, edge_table, edge_bits, bloom, bloom_bits, n_words, term_ids):
    """Run the automaton over captions i, i+1, ...: caption i's query ids go to
    ids[res_off[i]:res_off[i+1]], and its nodes are stamped stamp0 + i. Returns the caption it stopped
    at: len(woff) - 1 when done, less when `ids` is full (the caller grows it and resumes with fresh
    stamps; growing it here would slow the loop)."""
    n_caps = woff.shape[0] - 1
    n = res_off[i]
    while i < n_caps:
        stamp = stamp0 + i
        state = 0
        for j in range(woff[i], woff[i + 1]):
            wid = wids[j]
            if wid == _NO:
                state = 0  # no query holds this word, so no match spans it
                continue
            while True:
                nxt = _goto(state, wid, nodes, edge_table, edge_bits, bloom, bloom_bits, n_words)
                if nxt != _NO or state == 0:
                    break
                state = nodes[state, FAIL]
            state = nxt
            node = state if nodes[state, END] > nodes[state, FIRST] else nodes[state, OUT]
            while node > 0 and nodes[node, STAMP] != stamp:
                first, end = nodes[node, FIRST], nodes[node, END]
                if n + (end - first) > ids.shape[0]:
                    return i
                nodes[node, STAMP] = stamp
                ids[n] = nodes[node, TERM]
                n += 1
                for t in range(first + 1, end):
                    ids[n] = term_ids[t]
                    n += 1
                node = nodes[node, OUT]
        i += 1
        res_off[i] = n
    return i


# ---------------------------------------------------------------- the matcher


@dataclass(frozen=True)
class Matches:
    """Matched query ids for a batch of captions: caption i matched ids[offsets[i]:offsets[i+1]].
    Kept as two arrays so a batch costs no Python objects until someone asks for a caption's ids."""

    offsets: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> tuple[int, ...]:
        return tuple(self.ids[self.offsets[i]:self.offsets[i + 1]].tolist())

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        ids, offsets = self.ids.tolist(), self.offsets.tolist()
        return (tuple(ids[offsets[i]:offsets[i + 1]]) for i in range(len(self)))

    def packed(self) -> Iterator[bytes]:
        """Each caption's ids as `pack_ids` writes them: slices of one buffer."""
        buffer, offsets = self.ids.astype("<i4").tobytes(), (self.offsets * 4).tolist()
        return (buffer[offsets[i]:offsets[i + 1]] for i in range(len(self)))


def _utf8(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A large_string array's bytes and offsets, without copying."""
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, np.int64, len(arr) + 1, 8 * arr.offset) if off_buf else np.zeros(1, np.int64)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


def _bits_for(n: int) -> int:
    """Table size (log2) for n keys at a load of 3/8 to 3/4."""
    return max(4, int(4 * max(n, 1) // 3).bit_length())


@dataclass
class QueryMatcher:
    queries: Sequence[str]
    _words: tuple = field(init=False, repr=False)
    _auto: tuple = field(init=False, repr=False)
    # The walk writes stamps into the automaton: one batch at a time per matcher (Beam threads share it).
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _stamp: int = field(init=False, repr=False, default=1)

    def __post_init__(self) -> None:
        forms = [match_form(q).split() for q in self.queries]
        vocab: dict[str, int] = {}
        for words in forms:
            for word in words:
                vocab.setdefault(word, len(vocab))
        n_words = max(len(vocab), 1)
        # Nodes 1..n_words are the one-word nodes (see the kernels' notes); deeper ones follow.
        edges: dict[tuple[int, int], int] = {}
        parent, edge_word = [_NO] + [0] * n_words, [_NO] + list(range(n_words))
        depth = [0] + [1] * n_words
        ends: list[tuple[int, int]] = []  # (node, query id)
        for qid, words in enumerate(forms):
            if not words:
                continue
            node = vocab[words[0]] + 1
            for word in words[1:]:
                wid = vocab[word]
                child = edges.get((node, wid))
                if child is None:
                    child = edges[(node, wid)] = len(parent)
                    parent.append(node)
                    edge_word.append(wid)
                    depth.append(depth[node] + 1)
                node = child
            ends.append((node, qid))
        n_nodes = len(parent)

        encoded = [w.encode("utf-8") for w in vocab]
        word_start = np.zeros(len(encoded) + 1, np.int64)
        word_start[1:] = np.cumsum([len(w) for w in encoded])
        word_data = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.zeros(0, np.uint8)
        word_keys = _vocab_keys(word_data, word_start, _TABLE)  # vocabulary words are match forms already
        word_bits = _bits_for(len(encoded))
        word_table = _pair_table(word_keys, np.arange(len(encoded), dtype=np.uint64), word_bits, np.uint64(0))
        words = (word_table, word_bits, word_data, word_start)

        deep = np.array([(node, wid, child) for (node, wid), child in edges.items()], np.int64).reshape(-1, 3)
        edge_keys = deep[:, 0] * n_words + deep[:, 1]
        edge_bits = _bits_for(len(deep))
        bloom_bits = max(1, edge_bits - BLOOM_SHIFT)

        ends.sort()
        term_start = np.zeros(n_nodes + 1, np.int64)
        np.add.at(term_start, np.array([n for n, _ in ends], np.int64) + 1, 1)
        term_start = np.cumsum(term_start)
        nodes = np.zeros((n_nodes, 8), np.int32)
        nodes[:, OUT] = _NO
        nodes[:, FIRST], nodes[:, END] = term_start[:-1], term_start[1:]
        filters = np.zeros(n_nodes, np.int64)
        np.bitwise_or.at(filters, deep[:, 0], np.left_shift(np.int64(1), deep[:, 1] & 63))
        nodes[:, FILTER:FILTER + 2] = filters.view(np.int32).reshape(-1, 2)
        term_ids = np.array([q for _, q in ends], np.int32)
        terminal = term_start[1:] > term_start[:-1]
        nodes[terminal, TERM] = term_ids[term_start[:-1][terminal]]
        auto = (
            nodes,
            _pair_table(edge_keys, deep[:, 2], edge_bits, -1),
            edge_bits,
            _bloom(edge_keys, bloom_bits),
            bloom_bits,
            n_words,
            term_ids,
        )
        order = np.argsort(np.array(depth, np.int32), kind="stable").astype(np.int32)
        _link(order, np.array(parent, np.int32), np.array(edge_word, np.int32), *auto[:-1])
        self._words, self._auto = words, auto

    def match_many(self, captions: Sequence[str]) -> Matches:
        """Ids of every query occurring in each caption as whole words, in reading order."""
        wids, woff, high = _word_ids(*_utf8(pa.array(captions, pa.large_string())), _TABLE, self._words, True)
        if high.any():
            which = np.flatnonzero(high)
            forms = pa.array([match_form(captions[k]) for k in which.tolist()], pa.large_string())
            forms_wids, forms_woff, _ = _word_ids(*_utf8(forms), _TABLE, self._words, False)
            wids, woff = _splice(wids, woff, forms_wids, forms_woff, which)
        n_caps = len(woff) - 1
        ids = np.empty(max(64, 2 * len(wids)), np.int32)
        res_off = np.zeros(len(woff), np.int64)
        with self._lock:
            i = 0
            while True:
                if self._stamp + 2 * n_caps >= 2**31 - 1:  # the stamps would overflow int32: start again
                    self._auto[0][:, STAMP] = 0
                    self._stamp = 1
                i = _walk(wids, woff, i, self._stamp, ids, res_off, *self._auto)
                self._stamp += n_caps
                if i == n_caps:
                    break
                ids = np.concatenate([ids, np.empty_like(ids)])
        return Matches(res_off, ids[:res_off[-1]])

    def match(self, caption: str) -> tuple[int, ...]:
        return self.match_many([caption])[0]


_CACHE: dict[str, QueryMatcher] = {}
_CACHE_LOCK = threading.Lock()


def matcher_for(path: str) -> QueryMatcher:
    """One automaton per process and query list: Beam creates many DoFn instances, and a long-lived worker
    serves job after job, so the cache is keyed by the file's content, not its path."""
    data = querylist.read_bytes(path)
    key = hashlib.blake2b(data, digest_size=16).hexdigest()
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE.clear()  # one list at a time: a worker never needs the previous job's automaton again
            _CACHE[key] = QueryMatcher(querylist.decode_queries(data, path))
        return _CACHE[key]


class MatchQueries(beam.PTransform):
    """Lists of candidates in; a `Pair`, as a plain tuple, out for each caption matching at least one query."""

    def __init__(self, queries: str, files: Sequence[str] = ()):
        super().__init__()
        self.queries, self.files = queries, tuple(files)

    def expand(self, batches):
        return count_in(batches, "MatchBatch", _MatchBatch(self.queries, self.files))


class _MatchBatch(CountingDoFn):
    """The matcher works a batch at a time: per caption it would spend more on the call than the match."""

    matched, unmatched = counter("matched"), counter("unmatched")

    def __init__(self, queries: str, files: Sequence[str] = ()):
        self.queries, self.files = queries, files

    def setup(self):
        relax_gc()
        self.matcher = matcher_for(self.queries)
        self.file_index = {path: i for i, path in enumerate(self.files)}

    def process(self, batch):
        hits = 0
        index = self.file_index
        for c, ids in zip(batch, self.matcher.match_many([c.caption for c in batch]).packed()):
            if ids:
                hits += 1
                yield c.caption, c.url, ids, index.get(c.source, -1), c.row, c.additional
        self.tally.count(self.matched, hits)
        self.tally.count(self.unmatched, len(batch) - hits)
