"""Beam pipeline options with the local runner chosen explicitly.

Beam's DirectRunner first tries the Prism runner, which it downloads from GitHub
at every start, and falls back to the in-process FnApiRunner when it cannot:
the runner would differ between machines with and without internet, and the
product would fetch a binary at run time. With no `--runner`, or
`--runner DirectRunner`, jobs run on the FnApiRunner, the runner the tests use;
`--direct_running_mode multi_processing --direct_num_workers N` spreads it over
processes. Any other runner (`DataflowRunner`, `PortableRunner`, `SparkRunner`,
or `PrismRunner` for those who want Prism) is used as given.

The local runner's data plane runs without its timed flushing (see
`exact_data_plane`): with it, the multi-process runner lost elements.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Sequence, TypeVar

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

log = logging.getLogger(__name__)

# Named by its class path: Beam 2.62 (the SDK that matches the Spark job server Maven Central serves) knows no
# short name "FnApiRunner"; "FnApiRunner" given by the user is read as this.
LOCAL_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
# What --runner says when it means the local runner: nothing, Beam's default name, or the runner's own.
_LOCAL_NAMES = (None, "DirectRunner", "FnApiRunner", LOCAL_RUNNER)


_View = TypeVar("_View", bound=PipelineOptions)


class ViewsOnce(PipelineOptions):
    """Beam's options, each view made once. Beam makes a view of a class (an argument parser of the class's
    options and a parse of every flag) at each `view_as`, and a job asks for views at every transform it
    applies and again when it runs: a visible part of a build's time before its first request
    (bench/download.py; figures in bench/RESULTS.md). A view reads and writes the options' one dict of
    values, so a kept view sees every change; the views are not pickled with the options."""

    def view_as(self, cls: type[_View]) -> _View:
        views = self.__dict__.setdefault("_views", {})
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_views", None)
        return state


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    relax_gc()  # the local runner's in-process workers live in this process
    exact_data_plane()
    options = ViewsOnce(list(beam_args))
    standard = options.view_as(StandardOptions)
    if standard.runner in _LOCAL_NAMES:
        standard.runner = LOCAL_RUNNER
    if standard.runner == LOCAL_RUNNER:
        log.info("running on Beam's FnApiRunner (pid %d)", os.getpid())
    return options


def workers_in_this_process(beam_args: Sequence[str]) -> bool:
    """Whether the job's workers run in this process: the local runner in memory or on threads. Only then
    is what this process starts ahead of a job (the decoding processes) of use to the job."""
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner not in _LOCAL_NAMES:
        return False
    return options.view_as(DirectOptions).direct_running_mode in ("in_memory", "multi_threading")


# CPython's cyclic collector walks every live container object each time enough have been allocated. A
# Beam worker holds millions of small, acyclic tuples and lists at a time, so with the default thresholds
# those walks take a large share of the plan's CPU (bench/scale.py); reference counting frees all of it
# anyway.
GC_THRESHOLDS = (1_000_000, 1_000, 1_000)


def relax_gc() -> None:
    """Collect cyclic garbage rarely in this process (a Beam worker or the local runner's driver)."""
    if gc.get_threshold()[0] < GC_THRESHOLDS[0]:
        gc.set_threshold(*GC_THRESHOLDS)


def exact_data_plane() -> None:
    """Turn off the local runner's timed flushing of what it sends to its workers.

    Beam's FnApiRunner (2.77) sends a stage's input to each worker through an output stream that a timer
    thread flushes every second (`DATA_BUFFER_TIME_LIMIT_MS`). The flush empties the buffer after handing
    its bytes on, without locking the writer out, so what is written during the hand-over is lost: a
    runner under load drops whole elements. Without the timer the stream sends when it is closed, as Beam's
    own SDK workers do by default; a batch job gains nothing from the timer.
    """
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
