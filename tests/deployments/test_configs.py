"""The checked-in configs are valid: Ray's cluster schema, Serve's schema, our AppArgs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from deployments.config import AppArgs

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_matches_rays_schema():
    import json

    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)  # raises ValidationError when invalid
    assert config["available_node_types"]["gpu_worker"]["max_workers"] >= 1
    assert any("[gpu,serve,jobs]" in c for c in config["setup_commands"])
    assert any("serve deploy" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize("path", ["serve_config.yaml", "deploy/serve_config.gpu.yaml"])
def test_serve_configs_validate(path):
    from ray.serve.schema import ServeDeploySchema

    from deployments.collections import config_problems

    raw = yaml.safe_load((ROOT / path).read_text())
    config = ServeDeploySchema.model_validate(raw)
    assert config_problems(raw) == []
    app = config.applications[0]  # the default collection; others are named collections
    assert app.import_path == "deployments.app:build_app" and app.route_prefix == "/"
    args = AppArgs.model_validate(app.args)
    # whatever holds the shards scales with the load: the shard deployments, or with
    # in_router (one machine) the routers
    scaled = args.router_autoscaling if args.shard.in_router else args.shard.autoscaling
    assert scaled is not None
    for other in config.applications[1:]:
        assert AppArgs.model_validate(other.args).collection is not None
    if "gpu" in path:
        assert args.shard.num_gpus > 0 and args.auth_token_env


def test_kuberay_service_carries_the_gpu_serve_config():
    service = yaml.safe_load((ROOT / "deploy/kuberay-rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    gpu_config = yaml.safe_load((ROOT / "deploy/serve_config.gpu.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == gpu_config
    worker = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_shard_options_place_replicas_on_their_gpus():
    from deployments.config import ShardOptions
    from shards.gpu import GpuOptions

    cpu = ShardOptions()
    assert cpu.device() == "cpu" and cpu.batch_size == 16  # merged while queued
    assert cpu.slots() == len(os.sched_getaffinity(0))  # a search per core (1 OpenMP thread)
    assert ShardOptions(omp_threads=2).slots() == max(1, len(os.sched_getaffinity(0)) // 2)
    two = ShardOptions(
        num_gpus=2, gpu={"multi_gpu": "shard", "float16": True, "temp_memory_mb": 512}
    )
    assert two.device() == GpuOptions(
        devices=(0, 1), multi_gpu="shard", float16=True, temp_memory_mb=512
    )
    assert two.batch_size == 32 and two.slots() == 2  # one on the GPUs, one in its CPU part
    assert ShardOptions(num_gpus=0.5).device() == GpuOptions(devices=(0,))
    assert ShardOptions(num_gpus=1, max_batch_size=8).batch_size == 8
    with pytest.raises(ValueError, match="whole number"):
        ShardOptions(num_gpus=1.5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch_size": 64, "max_ongoing_requests": 32}, "never holds enough"),
        (
            {"max_ongoing_requests": 8, "autoscaling": {"target_ongoing_requests": 16}},
            "never reached",
        ),
        ({"health_check_period_s": 15}, "report is stale after 20.0 s"),
    ],
)
def test_incoherent_shard_options_are_refused(options, message):
    from pydantic import ValidationError

    from deployments.config import ShardOptions

    with pytest.raises(ValidationError, match=message):
        ShardOptions(**options)


def test_shipped_configs_are_coherent():
    import yaml

    from deployments.config import AppArgs

    for path in ("deploy/serve_config.gpu.yaml", "serve_config.yaml"):
        with open(path) as f:
            for app in yaml.safe_load(f)["applications"]:
                AppArgs.model_validate(app["args"])  # raises on an incoherent combination


def test_cluster_config_has_no_single_router():
    """On a cluster the router is autoscaled from two replicas: one router lost (its node
    died) leaves another serving."""
    import yaml

    from deployments.config import AppArgs

    with open("deploy/serve_config.gpu.yaml") as f:
        app = yaml.safe_load(f)["applications"][0]
    args = AppArgs.model_validate(app["args"])
    assert args.router_autoscaling is not None and args.router_autoscaling.min_replicas >= 2


def test_autoscaling_bounds_are_checked():
    from pydantic import ValidationError

    from deployments.config import Autoscaling

    with pytest.raises(ValidationError, match="min_replicas 3 > max_replicas 2"):
        Autoscaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match=r"look_back_period_s 5\.0 must be > metrics_int"):
        Autoscaling(look_back_period_s=5)


@pytest.mark.parametrize(
    "args",
    [
        {"defaults_params": {"nprobe": 4}},
        {"shard": {"in_routr": True}},
        {"shard": {"num_replica": 4}},
        {"shard": {"gpu": {"float_16": True}}},
        {"shard": {"autoscaling": {"max_replica": 8}}},
        {"limits": {"max_kk": 5}},
        {"shard": {"faults": {"fail_shard": [1]}}},
        {"recall": {"sample_rat": 0.1}},
    ],
)
def test_an_unknown_key_in_the_args_is_refused(args):
    """A typo deployed the defaults without a word (``in_routr: true`` kept the shard
    deployments, ``num_replica: 4`` one replica)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        AppArgs.model_validate({"index_uri": "/x", **args})


@pytest.mark.parametrize(
    "args",
    [
        {"shard": {"num_replicas": 4, "autoscaling": {"max_replicas": 8}}},
        {"router_replicas": 3, "router_autoscaling": {"max_replicas": 4}},
    ],
)
def test_a_replica_count_beside_autoscaling_is_refused(args):
    """Autoscaling replaced the count without a word (4 replicas asked, 1 to 8 given)."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give one of them"):
        AppArgs.model_validate({"index_uri": "/x", **args})
    alone = {k: v for k, v in args.items() if "autoscaling" not in k and k != "shard"}
    AppArgs.model_validate({"index_uri": "/x", **alone})  # either one alone is fine
