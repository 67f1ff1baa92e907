"""Prometheus metrics of shards and router (Ray's metrics agent exports them per node).

Metrics are created with ``ray.serve.metrics`` inside each replica; Serve adds the
application, deployment and replica labels. Label values are bounded: shard numbers,
devices and status classes, never raw request parameters.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


class ShardMetrics:
    """The seed's per-index set plus latency and batch-size histograms, per shard replica."""

    def __init__(self) -> None:
        tags = ("shard",)
        self.vectors = Gauge("vsearch_shard_vectors", "vectors served", tag_keys=tags)
        self.dim = Gauge("vsearch_shard_dim", "vector dimension", tag_keys=tags)
        self.code_size = Gauge("vsearch_shard_index_bytes", "index file size", tag_keys=tags)
        self.gpu = Gauge("vsearch_shard_gpu_enabled", "1 when on a GPU", tag_keys=tags)
        self.cuvs = Gauge("vsearch_shard_cuvs_enabled", "1 when cuVS is used", tag_keys=tags)
        self.gpu_index_bytes = Gauge(
            "vsearch_shard_gpu_index_bytes", "GPU memory the shard clones took", tag_keys=tags
        )
        self.gpu_memory = Gauge(
            "vsearch_shard_gpu_memory_used_bytes",
            "memory in use on the replica's GPUs",
            tag_keys=tags,
        )
        self.build_s = Gauge("vsearch_shard_build_seconds", "index build time", tag_keys=tags)
        self.searches = Counter("vsearch_shard_searches_total", "search calls", tag_keys=tags)
        self.queries = Counter("vsearch_shard_queries_total", "query vectors", tag_keys=tags)
        self.errors = Counter("vsearch_shard_search_errors_total", "failed searches", tag_keys=tags)
        self.load_failures = Counter(
            "vsearch_shard_load_failures_total", "index versions that failed to load", tag_keys=tags
        )
        self.latency = Histogram(
            "vsearch_shard_search_seconds",
            "faiss search time per batch",
            boundaries=LATENCY_S,
            tag_keys=tags,
        )
        self.sequence = Gauge(
            "vsearch_shard_applied_sequence", "mutation sequence applied", tag_keys=tags
        )
        self.delta_rows = Gauge("vsearch_shard_delta_rows", "rows in the delta", tag_keys=tags)
        self.tombstones = Gauge(
            "vsearch_shard_tombstones", "main rows deleted or replaced", tag_keys=tags
        )
        self.batch = Histogram(
            "vsearch_shard_batch_queries",
            "query vectors per search",
            boundaries=SIZES,
            tag_keys=tags,
        )
        self.merged = Histogram(
            "vsearch_shard_batch_requests",
            "requests merged into one search (deployments.coalesce)",
            boundaries=SIZES,
            tag_keys=tags,
        )


class RouterMetrics:
    """End-to-end, fan-out and merge latency, coverage and request shape at the router."""

    def __init__(self) -> None:
        self.requests = Counter(
            "vsearch_requests_total", "requests by status class", tag_keys=("status",)
        )
        self.latency = Histogram(
            "vsearch_request_seconds", "end-to-end request time", boundaries=LATENCY_S
        )
        self.fanout = Histogram(
            "vsearch_fanout_seconds", "time for the shards to answer", boundaries=LATENCY_S
        )
        self.merge = Histogram("vsearch_merge_seconds", "top-k merge time", boundaries=LATENCY_S)
        self.degraded = Counter("vsearch_degraded_total", "answers from fewer than all shards")
        self.retries = Counter(
            "vsearch_shard_retries_total", "shard calls retried after their replica died"
        )
        self.k = Histogram("vsearch_request_k", "k per request", boundaries=SIZES)
        self.nprobe = Histogram(
            "vsearch_request_nprobe", "effective nprobe per request", boundaries=SIZES
        )
        self.queries = Histogram(
            "vsearch_request_queries", "query vectors per request", boundaries=SIZES
        )
        write_tags = ("kind", "status")
        self.writes = Counter(
            "vsearch_writes_total", "upserts and deletes by status class", tag_keys=write_tags
        )
        self.write_rows = Counter(
            "vsearch_write_rows_total", "ids upserted or deleted", tag_keys=("kind",)
        )
        self.write_latency = Histogram(
            "vsearch_write_seconds", "time to make a write durable", boundaries=LATENCY_S
        )
        self.reads = Counter(
            "vsearch_reads_total", "gets of stored rows by status class", tag_keys=("status",)
        )
        self.plans = Counter(
            "vsearch_filter_plans_total",
            "filtered searches by the plan each shard took (exact, ann, ann-cpu)",
            tag_keys=("plan",),
        )


class LogMetrics:
    """The mutation log and compactions, at the app's coordinator."""

    def __init__(self) -> None:
        self.sequence = Gauge("vsearch_log_sequence", "last durable mutation sequence")
        self.compactions = Counter(
            "vsearch_compactions_total", "online compactions by outcome", tag_keys=("state",)
        )
        self.compaction_s = Gauge(
            "vsearch_compaction_seconds", "duration of the last online compaction"
        )


RECALL = [0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.99, 1.0]


class RecallMetrics:
    """The online recall monitor, at the app's coordinator (``deployments.monitor``)."""

    def __init__(self) -> None:
        tags = ("shard", "plan")
        self.recall = Gauge(
            "vsearch_recall",
            "measured recall@k of sampled live queries over the window, active version "
            "(shard 'all': the answers callers got; plan 'all': every plan)",
            tag_keys=tags,
        )
        self.samples = Gauge(
            "vsearch_recall_samples", "queries measured in the window", tag_keys=tags
        )
        self.target = Gauge(
            "vsearch_recall_target", "the recall the active version's defaults were tuned for"
        )
        self.at_target = Gauge(
            "vsearch_recall_at_target",
            "measured recall of the queries answered with the defaults (the tuned target), "
            "filter plans but the exact one included: what the alert compares with the target",
        )
        self.at_target_samples = Gauge(
            "vsearch_recall_at_target_samples", "queries behind vsearch_recall_at_target"
        )
        self.incomplete = Gauge(
            "vsearch_recall_incomplete",
            "samples some shard never measured (a failed or degraded answer, a skipped re-run)",
        )
        self.per_query = Histogram(
            "vsearch_query_recall",
            "recall@k of each measured query (the service's answer)",
            boundaries=RECALL,
            tag_keys=("plan",),
        )
        self.skipped = Gauge(
            "vsearch_recall_skipped",
            "sampled queries the shards did not re-run (budget, queue, unmeasurable), "
            "since their replicas started",
            tag_keys=("reason",),
        )
        self.retunes = Counter(
            "vsearch_retunes_total",
            "automatic re-tunes on live queries, by outcome",
            tag_keys=("state",),
        )
