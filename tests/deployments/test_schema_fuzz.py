"""Property-based requests generated from the service's own OpenAPI schema (schemathesis),
bounded in count: no 5xx, every answer matches the documented status codes, content types and
schemas, and schema-invalid requests are rejected. An app on a private copy of the `flat`
index (3 shards) is fuzzed (its writes and compactions change only that copy); the schema is
read from the running service.

Not checked: that every schema-valid request is accepted (schemathesis's
``positive_data_acceptance``): the dimension, k and the other limits are the index's and the
deployment's, checked at run time and answered with a documented 400."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.ray

MAX_EXAMPLES = 40  # per operation


def test_generated_requests_get_documented_answers(serve_base, indexes, tmp_path):
    import shutil

    from tests.deployments.conftest import deploy

    root = tmp_path / "flat"
    shutil.copytree(indexes["root"] / "flat", root, ignore=shutil.ignore_patterns("log"))
    deploy("fuzz", {"index_uri": str(root), "limits": {"max_body_bytes": 200_000}})
    base = f"{serve_base}/fuzz"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    schema.config.base_url = base  # the app's route prefix
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert paths >= {"/v1/search", "/v1/upsert", "/v1/delete", "/v1/get", "/v1/health", "/v1/stats"}
    calls = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests every run
        )
        def check(case):
            response = case.call_and_validate(
                timeout=30, excluded_checks=[schemathesis.checks.positive_data_acceptance]
            )
            calls.append(response.status_code)

        check()
    assert len(calls) >= len(operations) and all(code < 500 or code == 503 for code in calls)
