"""``python -m jobs build``: the single-process build's steps, spread over a Ray cluster.

1. Train once: one task (on a GPU when the cluster has one) samples the input, trains the
   template and draws the held-out tuning rows, exactly as ``shards.build`` does.
2. Partition: Ray Data streams the input into per-shard parts (``jobs.partition``).
3. Add: one task per shard clones the template (shipped once through the object store),
   adds its parts in input order and writes the shard's files.
4. Tune: one actor per shard; the curve is measured on the held-out rows across all of
   them (``jobs.tuning``); then each adds its held-out rows and writes its final files.
5. Publish: the manifest after every shard, CURRENT after the manifest.

Every step leaves a marker in the build's work folder (``jobs.work``): a rerun of the same
command after a worker, a node or the driver died redoes only the steps and shards that
did not finish, and a killed build never leaves a loadable index behind.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from jobs.partition import SourceSpec, partition
from jobs.tuning import FanOut, ShardTuner
from jobs.work import WorkFolder, build_key
from shards import cagra, memory, parts
from shards._faiss import faiss
from shards.artefact import new_version_name, publish_version, write_shard
from shards.build import (
    BuildOptions,
    cagra_graph,
    check_options,
    check_unique,
    choose_factory,
    graph_device_of,
    knobs_of,
    new_manifest,
    train_template,
    tuning_queries,
)
from shards.errors import VsearchError
from shards.manifest import Manifest, ShardEntry
from shards.metric import Metric
from shards.progress import progress
from shards.source import VectorSource
from shards.storage import Store
from shards.tuning import HELD_OUT, TUNE_K, untuned, with_tuning

log = logging.getLogger("jobs")


@dataclass
class JobOptions:
    """How to spread the build; the artefact does not depend on these."""

    cpus_per_shard: float = 1.0  # CPUs each shard's add task reserves (its faiss threads)
    fresh: bool = False  # discard this build's unfinished work instead of resuming it


def build(
    source: VectorSource, out_uri: str, opts: BuildOptions, job: JobOptions | None = None
) -> Manifest:
    """Build, tune and publish a new version under ``out_uri`` on the connected Ray cluster."""
    try:
        return _build(source, out_uri, opts, job or JobOptions())
    except Exception as exc:
        raise _user_error(exc) from None


def _build(source: VectorSource, out_uri: str, opts: BuildOptions, job: JobOptions) -> Manifest:
    metric = check_options(opts)
    t0 = time.perf_counter()
    work = WorkFolder(out_uri, build_key(source, opts))
    if job.fresh and work.exists():
        work.remove()
    for other in work.others():
        log.warning("another build's work folder %s/.build/%s is left; delete it", out_uri, other)
    state = work.read_json("state.json")
    if state is None:
        factory, reason = choose_factory(source.n, source.d, opts, metric)
        if opts.traffic != "batch":  # lone queries timed through Ray would time Ray
            reason += "; the distributed build times its tuning on batches"
            log.warning("traffic %s: the distributed build tunes on batches", opts.traffic)
        state = {"version": new_version_name(), "factory": factory, "reason": reason}
        work.write_json("state.json", state)
    else:
        log.warning("resuming the build of version %s from %s", state["version"], work.uri)
    factory = state["factory"]
    template, held = _template(work, source, factory, metric, opts, state)
    knobs = knobs_of(template, factory, source.d)
    held_ids = held[1] if held is not None else np.empty(0, np.int64)
    t_train = time.perf_counter() - t0
    counts = work.read_json("parts.json")
    if counts is None:
        if work.store.exists("parts"):
            work.store.delete_dir("parts")  # a partition cut short: start it again
        counts = partition(source, work.store.child("parts").uri, opts)
        work.write_json("parts.json", {str(s): n for s, n in sorted(counts.items())})
    counts = {int(s): int(n) for s, n in counts.items()}
    version = work.root.child(state["version"])
    staged = held is not None
    schema = source.metadata_schema if source.metadata_columns else None
    added, redone = _add_all(work, version, template, held_ids, factory, opts, job, counts, schema)
    t_add = time.perf_counter() - t0 - t_train
    manifest = new_manifest(source, opts, factory, state["reason"], metric, t_train, t_add)
    manifest = replace(manifest, index_version=state["version"])
    entries = [ShardEntry.from_dict(added[s]["entry"]) for s in range(opts.num_shards)]
    if staged:
        manifest, entries = _tune(work, version, manifest, entries, knobs, held, opts)
    elif knobs.names():
        manifest = untuned(manifest, knobs)
    if opts.partition == "range":  # hash partition: an id's copies meet in one shard
        check_unique(_ids(version, e) for e in entries)
    manifest.build["total_seconds"] = round(time.perf_counter() - t0, 3)
    manifest.build["distributed"] = {
        "nodes": len([n for n in ray.nodes() if n["Alive"]]),
        "shard_tasks_run": redone,
        "shard_nodes": len({added[s].get("node") for s in range(opts.num_shards)}),
        "resumed": len(redone) < opts.num_shards,
        "cpus_per_shard": job.cpus_per_shard,
    }
    published = publish_version(work.root, manifest, entries)
    work.remove()
    return published


def _template(work: WorkFolder, source, factory: str, metric: Metric, opts: BuildOptions, state):
    """The trained template and the held-out tuning queries, trained once per build."""
    if not work.store.exists("template.faiss"):
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        spec = SourceSpec.of(source)
        blob, held = ray.get(
            _train.options(num_gpus=gpus).remote(spec, factory, metric.value, opts, gpus > 0)
        )
        if held is not None:
            buf = io.BytesIO()
            np.savez(buf, xq=held[0], ids=held[1])
            work.store.write_bytes("held.npz", buf.getvalue())
        work.store.write_bytes("template.faiss", blob)  # last: it marks the step done
    template = faiss.deserialize_index(np.frombuffer(work.store.read_bytes("template.faiss"), "u1"))
    held = None
    if work.store.exists("held.npz"):
        with np.load(io.BytesIO(work.store.read_bytes("held.npz"))) as z:
            held = (z["xq"], z["ids"])
    return template, held


@ray.remote(max_retries=3)
def _train(spec: SourceSpec, factory: str, metric: str, opts: BuildOptions, gpu: bool):
    source, m = spec.open(), Metric.parse(metric)
    template = train_template(source, factory, m, opts, gpu=0 if gpu else None)
    tune = opts.tune and bool(knobs_of(template, factory, source.d).names())
    held = tuning_queries(source, m, opts) if tune else None
    return faiss.serialize_index(template).tobytes(), held


def _add_all(work, version: Store, template, held_ids, factory, opts, job, counts, schema):
    """Run the add task of every shard not added yet; returns (markers, shards run)."""
    added = work.entries("added", opts.num_shards)
    todo = [s for s in range(opts.num_shards) if s not in added]
    if not todo:
        return added, []
    ref = ray.put(faiss.serialize_index(template).tobytes())  # shipped once per node
    gpus = 1 if cagra.parse_factory(factory) and ray.cluster_resources().get("GPU", 0) else 0
    staged = work.store.child("staged").uri if len(held_ids) else None
    task = _add.options(num_cpus=job.cpus_per_shard, num_gpus=gpus)
    pending = {
        task.remote(s, work.uri, version.uri, ref, held_ids, factory, opts, staged, schema): s
        for s in todo
    }
    total = sum(counts.get(s, 0) for s in todo)
    desc = f"adding {total:,} rows to {len(todo)} shard(s)"
    for marker in progress(_as_done(pending), desc, len(todo), "shard", opts.progress):
        s = marker["shard"]
        added[s] = work.mark("added", s, marker)
        log.info("shard %d: %d rows in %.1f s", s, marker["rows"], marker["seconds"])
    return added, todo


def _as_done(pending: dict):
    refs = list(pending)
    while refs:
        done, refs = ray.wait(refs, num_returns=1)
        yield ray.get(done[0])


@ray.remote(max_retries=3)
def _add(shard, work_uri, version_uri, template, held_ids, factory, opts, staged_uri, schema):
    t0 = time.perf_counter()
    metric = Metric.parse(opts.metric)
    tpl = faiss.deserialize_index(np.frombuffer(template, "u1"))
    data, held = parts.assemble(tpl, Store(work_uri).child("parts"), shard, held_ids, schema)
    check_unique([data.ids, *(ids for _, ids, _ in held)])
    degree = cagra.parse_factory(factory)
    if degree is not None:
        data.index = cagra_graph(data.index, degree, metric, graph_device_of(opts))
    entry = write_shard(Store(staged_uri or version_uri), shard, data)
    rows = int(data.index.ntotal) + sum(len(ids) for _, ids, _ in held)
    del data, tpl, held
    memory.release()  # this worker process runs the next shard's task
    return {
        "shard": shard,
        "entry": entry.to_dict(),
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 3),
        "node": ray.get_runtime_context().get_node_id(),
    }


def _tune(work, version: Store, manifest: Manifest, staged, knobs, held, opts):
    """Tune across shard actors, then finish every shard; returns (manifest, final entries)."""
    finals = work.entries("final", opts.num_shards)
    tuning = work.read_json("tuning.json")
    if tuning is not None and len(finals) == opts.num_shards:
        entries = [ShardEntry.from_dict(finals[s]["entry"]) for s in range(opts.num_shards)]
        return replace(manifest, **tuning), entries
    staged_json = replace(manifest, shards=staged).to_json()
    cpus = min(1.0, max(0.01, ray.cluster_resources().get("CPU", 1) / (2 * opts.num_shards)))
    actors = {
        s: ShardTuner.options(num_cpus=cpus).remote(s, work.uri, staged_json, held[1])
        for s in range(opts.num_shards)
    }
    try:
        if tuning is None:
            fan = FanOut(list(actors.values()), Metric.parse(manifest.metric).keep_max)
            xq = held[0]
            gt = fan.truth(xq, TUNE_K + 1)
            no_self = np.full(len(xq), -1, dtype=np.int64)
            tuned = with_tuning(
                manifest, fan, knobs, xq, no_self, gt, opts.default_recall, HELD_OUT, opts.progress
            )
            tuning = {"tuning": tuned.tuning, "default_params": tuned.default_params}
            work.write_json("tuning.json", tuning)
        todo = {s: a.finish.remote(version.uri) for s, a in actors.items() if s not in finals}
        for s, ref in todo.items():
            finals[s] = work.mark("final", s, {"entry": ray.get(ref)})
    finally:
        for a in actors.values():
            ray.kill(a)
    entries = [ShardEntry.from_dict(finals[s]["entry"]) for s in range(opts.num_shards)]
    return replace(manifest, **tuning), entries


def _ids(version: Store, entry: ShardEntry) -> np.ndarray:
    data = version.read_bytes(entry.files["ids"].path)
    return pq.read_table(pa.BufferReader(data))["id"].to_numpy()


def _user_error(exc: BaseException) -> BaseException:
    """The VsearchError a Ray task raised, unwrapped from Ray's exceptions; else ``exc``."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, VsearchError):
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return exc
