from pipelines.runstats import distribution


def test_distribution_summarises_pairs_per_query():
    queries = ["a", "b", "c", "d"]
    d = distribution({0: 5, 1: 1, 2: 40, 3: 40}, queries, cap=40)
    assert d["queries"] == 4 and d["pairs"] == 86 and d["max"] == 40 and d["at_cap"] == 2
    assert d["head"][:2] == [["c", 40], ["d", 40]] and d["tail"][-1] == ["b", 1]
    assert d["histogram"] == {"1": 1, "4-7": 1, "32-63": 2}
    assert distribution({}, queries, None) == {"queries": 0, "pairs": 0}


def test_plan_marker_and_stats_round_trip_through_their_dataclasses(tmp_path):
    import json
    from dataclasses import asdict

    from pipelines.runstats import Plan, PlanDetails, RunStats, finish_plan, write_stats

    out = str(tmp_path)
    (tmp_path / "plan").mkdir()
    details = PlanDetails(shards=3, queries_in_list=5, per_query_before_balancing={"queries": 2},
                          per_query_after_balancing={"queries": 2, "at_cap": 1}, rejected_examples=["f: row 1"],
                          damaged_inputs=[], unproven_queries=[], misbalanced_queries=[])
    (tmp_path / "plan" / "_details.json").write_text(json.dumps(asdict(details)))
    assert PlanDetails.read(out) == details
    plan = finish_plan(out, details, {"candidates": 9}, {"url": {"largest": 1, "mean": 1.0, "keys": 9}})
    assert Plan.read(out) == plan and not (tmp_path / "plan" / "_details.json").exists()
    written = json.loads((tmp_path / "plan" / "_plan.json").read_text())
    assert list(written) == ["shards", "queries_in_list", "per_query_before_balancing", "per_query_after_balancing",
                             "rejected_examples", "damaged_inputs", "stages", "largest_keys"]
    stats = write_stats(out, plan, {"success": 4}, {}, {"cifar": 1}, cap=10, seed=7)
    assert RunStats.read(out) == stats
    assert stats.stages["candidates"] == 9 and stats.samples_in_tars == 4 and stats.shards == 3
    assert stats.excluded_per_eval_set == {"cifar": 1} and stats.rejected_examples == ["f: row 1"]


def test_a_damaged_plan_marker_counts_as_no_plan(tmp_path):
    from pipelines.runstats import Plan

    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "_plan.json").write_text('{"shards": 1}')
    assert Plan.read(str(tmp_path)) is None
    (tmp_path / "plan" / "_plan.json").write_text("not json")
    assert Plan.read(str(tmp_path)) is None
