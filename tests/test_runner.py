from apache_beam.options.pipeline_options import StandardOptions

from wit.core.runner import LOCAL_RUNNER, pipeline_options, workers_in_this_process


def test_the_local_runner_is_chosen_explicitly_and_others_are_kept():
    """By its class path, which every Beam version resolves (the short name is younger than some SDKs that a
    Spark or Flink job server is paired with)."""
    assert pipeline_options([]).view_as(StandardOptions).runner == LOCAL_RUNNER
    assert LOCAL_RUNNER.endswith(".FnApiRunner")
    assert pipeline_options(["--runner=DirectRunner"]).view_as(StandardOptions).runner == LOCAL_RUNNER
    assert pipeline_options(["--runner=FnApiRunner"]).view_as(StandardOptions).runner == LOCAL_RUNNER
    assert pipeline_options(["--runner", "DataflowRunner"]).view_as(StandardOptions).runner == "DataflowRunner"
    assert pipeline_options(["--runner=PrismRunner"]).view_as(StandardOptions).runner == "PrismRunner"


def test_the_local_runner_sends_everything_it_writes_while_its_send_queue_is_full():
    """What the runner writes to a worker's input stream while a flush of that stream is being handed to a
    full send queue (here: a callback that takes 0.3 s) must still reach the worker. Beam's timed flushing
    (every second) dropped it; the stream the runner makes for its workers must have no such timer."""
    import threading
    import time

    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.runners.worker.data_plane import ClosableOutputStream

    pipeline_options([])
    sent = []

    def to_send_queue(data: bytes) -> None:
        time.sleep(0.3)
        sent.append(len(data))

    before = threading.active_count()
    stream = ClosableOutputStream.create(to_send_queue, to_send_queue, worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    assert threading.active_count() == before  # no flushing thread
    chunk = b"x" * 100_000
    for _ in range(15):  # 1.5 s of writing: past one timed flush
        stream.write(chunk)
        time.sleep(0.1)
    stream.close()
    assert sum(sent) == 15 * len(chunk)


def test_workers_run_in_this_process_only_on_the_local_runner_in_memory_or_on_threads():
    assert workers_in_this_process([])
    assert workers_in_this_process(["--runner=DirectRunner"])
    assert workers_in_this_process(["--runner=FnApiRunner", "--direct_running_mode=multi_threading",
                                    "--direct_num_workers=2"])
    assert not workers_in_this_process(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert not workers_in_this_process(["--runner=DataflowRunner", "--project=p", "--region=r"])
    assert not workers_in_this_process(["--runner=PortableRunner", "--job_endpoint=localhost:8099"])


def test_a_kept_view_sees_every_change_and_the_options_pickle_without_their_views():
    import pickle

    from apache_beam.options.pipeline_options import DirectOptions, SetupOptions

    options = pipeline_options(["--direct_num_workers=2"])
    setup = options.view_as(SetupOptions)
    assert options.view_as(SetupOptions) is setup
    setup.save_main_session = True
    options.view_as(DirectOptions).direct_num_workers = 3
    assert options.view_as(SetupOptions).save_main_session and options.view_as(DirectOptions).direct_num_workers == 3
    assert options.get_all_options()["direct_num_workers"] == 3 and options.get_all_options()["save_main_session"]
    again = pickle.loads(pickle.dumps(options))
    assert "_views" not in again.__dict__
    assert again.view_as(DirectOptions).direct_num_workers == 3 and again.view_as(SetupOptions).save_main_session
