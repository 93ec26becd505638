"""Grouping with bounded work per key, whatever the data's hot keys, and with few Beam elements.

At web scale one key can hold a large share of the pool: a query such as "the"
matches most captions, one placeholder URL or image repeats millions of times,
one caption is every spam page's alt text. Nothing here puts all of a key's
elements on one worker:

- `CountPerKey` counts in each bundle first, so what crosses the shuffle is one
  partial count per key and bundle;
- `CombineInPartitions` combines in each bundle first, then ships one list of
  (key, accumulator) per partition and bundle;
- `Smallest` is a combine whose accumulator is one value and a count;
- `KeeperPerKey` pairs every element with its key's smallest element: keys
  with at most `max_group` elements are grouped; larger ("hot") keys get
  their smallest element from a combine, with Beam's hot-key fan-out, and it
  reaches their elements as a side input, so they are never grouped.

A Beam element costs more than the work most steps do on a value, so
`Batches` and `ListsPerKey` move lists where one value per element would do,
and lists cross a shuffle `pack`ed: Beam's generic coder walks a list item by
item, pickle without its memo does it in one call (bench/scale.py; figures in
bench/RESULTS.md).
Every grouping reports its elements per key (`pipelines.counters.Tally.key_size`).
"""

from __future__ import annotations

import io
import pickle
import zlib
from collections import Counter
from typing import Any, Callable, Iterable, Optional

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from pipelines.sizing import BATCH, FLUSH_KEYS, HOT_KEY_FANOUT, MAX_GROUP
from pipelines.counters import CountingDoFn, count_in, counter
from wit.core.runner import relax_gc



class CountPerKey(beam.PTransform):
    """Elements in; (key, how many elements name it) out, for every key `keys(element)` lists. Keys given
    as a numpy array of small non-negative ints (query ids) are counted with numpy."""

    def __init__(self, keys: Callable[[object], Iterable]):
        super().__init__()
        self.keys = keys

    def expand(self, pcoll):
        return (pcoll
                | "CountInBundle" >> beam.ParDo(_CountInBundle(self.keys))
                | "SumCounts" >> beam.CombinePerKey(sum).with_hot_key_fanout(HOT_KEY_FANOUT))


class _CountInBundle(beam.DoFn):
    def __init__(self, keys: Callable[[object], Iterable]):
        self.keys = keys

    def start_bundle(self):
        self.counts: Counter = Counter()
        self.array = np.zeros(0, np.int64)

    def process(self, element):
        keys = self.keys(element)
        if isinstance(keys, np.ndarray):
            more = np.bincount(keys, minlength=len(self.array))
            more[:len(self.array)] += self.array
            self.array = more
        else:
            self.counts.update(keys)
            if len(self.counts) > FLUSH_KEYS:
                yield from self.counts.items()
                self.counts = Counter()

    def finish_bundle(self):
        seen = np.flatnonzero(self.array)
        for kv in zip(seen.tolist(), self.array[seen].tolist()):
            yield windowed(kv)
        for kv in self.counts.items():
            yield windowed(kv)
        self.start_bundle()


def windowed(value) -> WindowedValue:
    """An output of `finish_bundle`, which Beam wants windowed (the global window: the job is batch)."""
    return WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])


def pack(values: list) -> bytes:
    """A list as one opaque value for the shuffle (Beam's coder then copies bytes). Pickled without a memo
    (what we ship holds no cycles): the memo is what makes pickling a large list slower than Beam's coder."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(values)
    return buffer.getvalue()


def unpack(blob: bytes) -> list:
    return pickle.loads(blob)


class Batches(beam.DoFn):
    """Elements in; lists of up to `size` of them out, cut per bundle. Steps that handle many small elements
    take them a list at a time: a Beam element costs more than the work on a caption or a pair. (Beam's
    BatchElements does the same, at twice the cost per element: it times every batch.)"""

    def __init__(self, size: int):
        self.size = size

    def start_bundle(self):
        self.batch: list = []

    def process(self, element):
        self.batch.append(element)
        if len(self.batch) >= self.size:
            yield self.batch
            self.batch = []

    def finish_bundle(self):
        if self.batch:
            yield windowed(self.batch)
            self.batch = []


class ListsPerKey(beam.DoFn):
    """Lists of values in; (key, (n, n values `pack`ed)) out, one per key and bundle, `key(value)` naming a
    value's key: a shuffle then moves lists, not values one by one (a Beam element costs more than a
    value)."""

    def __init__(self, key: Callable[[Any], Any]):
        self.key = key

    def start_bundle(self):
        self.lists: dict = {}
        self.held = 0

    def process(self, values: list):
        lists, key = self.lists, self.key
        for value in values:
            k = key(value)
            found = lists.get(k)
            if found is None:
                lists[k] = [value]
            else:
                found.append(value)
        self.held += len(values)
        if self.held > FLUSH_KEYS:
            yield from self._packed()

    def _packed(self):
        lists = [(key, (len(values), pack(values))) for key, values in self.lists.items()]
        self.start_bundle()
        return lists

    def finish_bundle(self):
        for kv in self._packed():
            yield windowed(kv)


class CombineInPartitions(beam.PTransform):
    """Values in; (key, fn's output) out, as CombinePerKey(fn) gives for (key(value), value), but shipped in
    lists.

    Values are combined in each bundle first (as Beam's combiner lifting does); then each bundle sends one
    list of (key, accumulator) per partition, `partition(key)` naming it, and each partition merges its
    keys. A Beam element costs more than combining a value, so when most keys are unique, as URLs are, one
    element per partition and bundle instead of one per key is most of the step's cost. A hot key sends one
    accumulator per bundle, as with CombinePerKey.
    """

    def __init__(self, fn: beam.CombineFn, key: Callable[[Any], Any], partition: Callable[[Any], int],
                 step: Optional[str]):
        super().__init__()
        self.fn, self.key, self.partition, self.step = fn, key, partition, step

    def _in_bundle(self) -> beam.DoFn:
        return _CombineInBundle(self.fn, self.key, self.partition)

    def expand(self, kv):
        grouped = kv | "CombineInBundle" >> beam.ParDo(self._in_bundle()) | "GroupPartition" >> beam.GroupByKey()
        return count_in(grouped, "MergePartition", _MergePartition(self.fn, self.step))


class CombinePackedInPartitions(CombineInPartitions):
    """The same over `pack`ed lists of values: one Beam element per list in, not per value."""

    def _in_bundle(self) -> beam.DoFn:
        return _CombineListsInBundle(self.fn, self.key, self.partition)


class _CombineInBundle(beam.DoFn):
    def __init__(self, fn: beam.CombineFn, key: Callable[[Any], Any], partition: Callable[[Any], int]):
        self.fn, self.key, self.partition = fn, key, partition

    def setup(self):
        relax_gc()

    def start_bundle(self):
        self.accumulators: dict = {}

    def process(self, value):
        key = self.key(value)
        acc = self.accumulators.get(key)
        self.accumulators[key] = self.fn.add_input(self.fn.create_accumulator() if acc is None else acc, value)
        if len(self.accumulators) > FLUSH_KEYS:
            yield from self._lists()

    def _lists(self):
        lists: dict[int, list] = {}
        for key, acc in self.accumulators.items():
            lists.setdefault(self.partition(key), []).append((key, acc))
        self.accumulators = {}
        return [(partition, pack(values)) for partition, values in lists.items()]

    def finish_bundle(self):
        for kv in self._lists():
            yield windowed(kv)


class _CombineListsInBundle(_CombineInBundle):
    """The same, over the values of `pack`ed lists: one Beam element per list, not per value."""

    def process(self, packed):
        for value in unpack(packed):
            yield from super().process(value)


class _MergePartition(CountingDoFn):
    def __init__(self, fn: beam.CombineFn, step: Optional[str]):
        self.fn, self.step = fn, step

    def process(self, item):
        _partition, lists = item
        merged: dict = {}
        n = 0
        for partial in lists:
            for key, acc in unpack(partial):
                n += 1
                before = merged.get(key)
                merged[key] = acc if before is None else self.fn.merge_accumulators([before, acc])
        if self.step is not None:
            self.tally.key_size(self.step, n)
        for key, acc in merged.items():
            yield key, self.fn.extract_output(acc)


class Smallest(beam.CombineFn):
    """The smallest value by `rank`, and how many values the key had."""

    def __init__(self, rank: Callable):
        self.rank = rank

    def create_accumulator(self):
        return None, 0

    def add_input(self, acc, value):
        best, n = acc
        return (value if best is None or self.rank(value) < self.rank(best) else best), n + 1

    def merge_accumulators(self, accumulators):
        best, n = None, 0
        for b, m in accumulators:
            if b is not None and (best is None or self.rank(b) < self.rank(best)):
                best = b
            n += m
        return best, n

    def extract_output(self, acc):
        return acc


class KeeperPerKey(beam.PTransform):
    """(key, value) in; (key, value, keeper) out for every value, the keeper being the key's smallest value by
    `rank`. No worker groups more than `max_group` values of one key: larger keys get their keeper from a
    combine. Values cross the shuffles in packed lists, spread over `partitions` by their key.

    `keyed(element)` may make the (key, value) of each input element as it is batched, saving a step of its
    own."""

    lists = False  # KeeperListsPerKey emits lists

    def __init__(self, step: str, rank: Callable, max_group: int = MAX_GROUP, partitions: int = 1,
                 keyed: Optional[Callable] = None):
        super().__init__()
        self.step, self.rank, self.max_group, self.partitions = step, rank, max_group, partitions
        self.keyed = keyed

    def expand(self, kv):
        n, max_group = self.partitions, self.max_group
        batches = kv | "Batch" >> beam.ParDo(_PackedBatches(BATCH, self.keyed))
        hot = (batches
               | "Sizes" >> CombinePackedInPartitions(beam.combiners.CountCombineFn(), _first,
                                                      lambda k: spread(k, n), None)
               | "HotKeys" >> beam.Filter(lambda kn: kn[1] > max_group))
        split = batches | "SplitHot" >> beam.ParDo(_SplitHot(), beam.pvalue.AsDict(hot)).with_outputs(_HOT, main="cold")
        cold = (split.cold
                | "ListsPerPartition" >> beam.ParDo(ListsPerKey(lambda kv: spread(kv[0], n)))
                | "GroupPartition" >> beam.GroupByKey())
        cold = count_in(cold, "KeepersOfPartition", _KeepersOfPartition(self.step, self.rank, self.lists))
        keepers = split[_HOT] | "HotKeeper" >> beam.CombinePerKey(Smallest(self.rank)).with_hot_key_fanout(
            HOT_KEY_FANOUT)
        keepers = count_in(keepers, "KeeperOnly", _KeeperOnly())
        lists = self.lists
        warm = split[_HOT] | "WithHotKeeper" >> beam.Map(
            lambda kv, k: [(kv[0], kv[1], k[kv[0]])] if lists else (kv[0], kv[1], k[kv[0]]),
            beam.pvalue.AsDict(keepers))
        return (cold, warm) | "AllKept" >> beam.Flatten()


class KeeperListsPerKey(KeeperPerKey):
    """The same, out as lists of (key, value, keeper), one per partition (or hot value), so that the next
    step takes them a list at a time: a Beam element costs more than the work on one value."""

    lists = True


class _PackedBatches(Batches):
    """Elements in; packed lists of up to `size` (key, value) out, `keyed` making them from the elements."""

    def __init__(self, size: int, keyed: Optional[Callable] = None):
        super().__init__(size)
        self.keyed = keyed

    def process(self, element):
        self.batch.append(element if self.keyed is None else self.keyed(element))
        if len(self.batch) >= self.size:
            yield pack(self.batch)
            self.batch = []

    def finish_bundle(self):
        if self.batch:
            yield windowed(pack(self.batch))
            self.batch = []


_HOT = "hot"


def _first(kv):
    return kv[0]


def spread(key, partitions: int) -> int:
    """A stable partition for a key (str, bytes or int): the same in every worker, unlike `hash`."""
    data = key.encode() if isinstance(key, str) else key if isinstance(key, bytes) else repr(key).encode()
    return zlib.crc32(data) * partitions >> 32


@beam.typehints.with_output_types(Any)
class _SplitHot(beam.DoFn):
    """A packed list of (key, value) in; its values of cold keys as one list, and each value of a hot key
    on its own (on `_HOT`)."""

    def process(self, packed, hot):
        cold = []
        for kv in unpack(packed):
            if kv[0] in hot:
                yield beam.pvalue.TaggedOutput(_HOT, kv)
            else:
                cold.append(kv)
        if cold:
            yield cold


class _KeepersOfPartition(CountingDoFn):
    def __init__(self, step: str, rank: Callable, lists: bool):
        self.step, self.rank, self.lists = step, rank, lists

    def process(self, item):
        _partition, lists = item
        groups: dict = {}
        for _n, packed in lists:
            for key, value in unpack(packed):
                groups.setdefault(key, []).append(value)
        out = []
        for key, values in groups.items():
            self.tally.key_size(self.step, len(values))
            keeper = min(values, key=self.rank)
            out += [(key, v, keeper) for v in values]
        if self.lists:
            yield out
        else:
            yield from out


class _KeeperOnly(CountingDoFn):
    """A hot key's keeper; hot keys are counted, their size is not a group's."""

    hot_keys = counter("hot_keys")

    def process(self, kv):
        self.tally.count(self.hot_keys)
        key, (keeper, _n) = kv
        yield key, keeper
