from apache_beam.options.pipeline_options import StandardOptions

from wit.runner import LOCAL_RUNNER, pipeline_options


def test_the_local_runner_is_chosen_explicitly_and_others_are_kept():
    assert pipeline_options([]).view_as(StandardOptions).runner == LOCAL_RUNNER == "FnApiRunner"
    assert pipeline_options(["--runner=DirectRunner"]).view_as(StandardOptions).runner == LOCAL_RUNNER
    assert pipeline_options(["--runner", "DataflowRunner"]).view_as(StandardOptions).runner == "DataflowRunner"
    assert pipeline_options(["--runner=PrismRunner"]).view_as(StandardOptions).runner == "PrismRunner"
