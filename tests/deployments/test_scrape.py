"""deployments.scrape merges node exports into one page, without the samples of applications
Serve no longer runs (Ray keeps exporting them after an app is deleted). No Ray needed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from deployments.scrape import merge_exposition

NODE_A = """# HELP ray_vsearch_requests_total requests
# TYPE ray_vsearch_requests_total counter
ray_vsearch_requests_total{application="live",status="2xx"} 7.0
ray_vsearch_requests_total{application="gone",status="2xx"} 3.0
# HELP ray_serve_num_replicas replicas
# TYPE ray_serve_num_replicas gauge
ray_serve_num_replicas{application="gone"} 2.0
# HELP ray_serve_controller_control_loop_duration_s loop
# TYPE ray_serve_controller_control_loop_duration_s gauge
ray_serve_controller_control_loop_duration_s 0.01
# HELP ray_object_store_memory other
# TYPE ray_object_store_memory gauge
ray_object_store_memory 5.0
"""
NODE_B = """# HELP ray_vsearch_requests_total requests
# TYPE ray_vsearch_requests_total counter
ray_vsearch_requests_total{application="live",status="4xx"} 1.0
"""


def _samples(page: bytes) -> dict[str, list]:
    return {
        f.name: sorted((tuple(sorted(s.labels.items())), s.value) for s in f.samples)
        for f in text_string_to_metric_families(page.decode())
    }


def test_nodes_merge_and_gone_applications_are_left_out():
    got = _samples(merge_exposition([NODE_A, NODE_B], apps={"live"}))
    assert got == {
        "ray_vsearch_requests": [
            ((("application", "live"), ("status", "2xx")), 7.0),
            ((("application", "live"), ("status", "4xx")), 1.0),
        ],
        # samples without an application label are the cluster's: kept
        "ray_serve_controller_control_loop_duration_s": [((), 0.01)],
    }


def test_without_the_list_of_applications_nothing_is_left_out():
    got = _samples(merge_exposition([NODE_A, NODE_B]))
    assert len(got["ray_vsearch_requests"]) == 3 and "ray_serve_num_replicas" in got
    assert "ray_object_store_memory" not in got  # not a vsearch or Serve family
