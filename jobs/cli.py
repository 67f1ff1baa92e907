"""``python -m jobs build INPUT --out DIR --shards N [--address ADDR]``: the distributed build.

It takes every flag of ``python -m shards build`` and writes the same artefact. Without
``--address`` it joins the cluster in ``RAY_ADDRESS`` (as under ``ray job submit``) or starts
a local Ray. User mistakes exit with status 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from shards.cli import add_build_arguments, build_inputs, describe_build, run, why_chosen
from shards.errors import InvalidInput


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs", description=__doc__)
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="build a sharded index on a Ray cluster (Ray Data)")
    add_build_arguments(b)
    b.add_argument(
        "--address", help="Ray cluster to run on (default: RAY_ADDRESS, else a local Ray)"
    )
    b.add_argument(
        "--cpus-per-shard",
        type=float,
        default=1.0,
        help="CPUs each shard's add task reserves (the faiss threads it adds with)",
    )
    b.add_argument(
        "--fresh", action="store_true", help="discard unfinished work of this build, do not resume"
    )
    b.set_defaults(run=_build)
    return p


def _build(args) -> int:
    import ray

    from jobs.build import JobOptions, build

    source, opts = build_inputs(args)
    if args.cpus_per_shard <= 0:
        raise InvalidInput(f"--cpus-per-shard must be > 0, got {args.cpus_per_shard}")
    ray.init(address=args.address, log_to_driver=True, configure_logging=False)
    try:
        job = JobOptions(cpus_per_shard=args.cpus_per_shard, fresh=args.fresh)
        m = build(source, args.out, opts, job)
    finally:
        ray.shutdown()
    dist = m.build["distributed"]
    print(
        f"{describe_build(m)}; on {dist['nodes']} node(s), "
        f"{len(dist['shard_tasks_run'])} shard task(s) run"
    )
    print(f"chosen: {why_chosen(m)}")
    return 0
