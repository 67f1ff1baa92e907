"""Typed arguments of the Serve application (the ``args:`` of serve_config.yaml)."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from deployments.swap import REPORT_TTL_S
from shards.gpu import GpuOptions
from shards.planner import MAX_CANDIDATES, MAX_K, MAX_QUERIES
from shards.writes import MAX_WRITE_ROWS


class Settings(BaseModel):
    """A part of the app's arguments: a key it does not know is an error (a typo such as
    ``in_routr`` or ``num_replica`` would otherwise deploy the defaults without a word)."""

    model_config = ConfigDict(extra="forbid")


class Autoscaling(Settings):
    """Serve autoscaling of a deployment (each shard deployment, or the router)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = 4.0
    upscale_delay_s: float = Field(30.0, ge=0, description="load above target this long: more")
    downscale_delay_s: float = Field(600.0, ge=0, description="load below target this long: fewer")
    look_back_period_s: float = Field(30.0, gt=0, description="the window load is averaged over")
    metrics_interval_s: float = Field(10.0, gt=0, description="how often replicas report load")

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling min_replicas {self.min_replicas} > max_replicas {self.max_replicas}"
            )
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"autoscaling look_back_period_s {self.look_back_period_s} must be > "
                f"metrics_interval_s {self.metrics_interval_s}: the window would hold no report"
            )
        return self


FaultyCall = Literal["search", "metadata", "reconstruct"]


class Faults(Settings):
    """Fault injection for tests and drills; off unless set. Never set in production."""

    fail_shards: list[int] = Field(default_factory=list, description="these shards raise")
    fail_methods: list[FaultyCall] = Field(
        default_factory=lambda: list[FaultyCall](["search"]), description="in these calls"
    )
    delay_ms: dict[int, int] = Field(default_factory=dict, description="shard -> added delay")


class GpuSettings(Settings):
    """How a GPU replica holds its shards (used when ``num_gpus`` > 0)."""

    float16: bool = Field(False, description="Flat: float16 vectors; IVF-PQ: float16 tables")
    use_cuvs: bool | None = Field(None, description="None: cuVS when faiss has it")
    temp_memory_mb: int | None = Field(None, ge=0, description="scratch memory per GPU")
    multi_gpu: Literal["replicate", "shard"] = Field(
        "replicate", description="num_gpus >= 2: copies split the queries, or IVF lists split"
    )


class ShardOptions(Settings):
    """Options applied to every shard deployment."""

    num_replicas: PositiveInt | None = Field(1, description="fixed replicas (or autoscaling)")
    autoscaling: Autoscaling | None = Field(None, description="instead of num_replicas")
    num_cpus: float = Field(0.0, ge=0, description="0 lets replicas share cores (see README)")
    num_gpus: float = Field(
        0.0, ge=0, description="> 0 clones the shards to the replica's GPU(s); 2 uses two GPUs"
    )
    gpu: GpuSettings = Field(default_factory=GpuSettings)
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each replica needs (node pinning)"
    )
    omp_threads: PositiveInt = Field(1, description="OpenMP threads per replica")
    shards_per_replica: PositiveInt = Field(
        1, description="shards each replica serves (merged in the replica); 1 on GPU clusters"
    )
    max_batch_size: PositiveInt | None = Field(
        None,
        description="most concurrent requests merged into one search at the shard "
        "(deployments.coalesce); default 16 on CPU, 32 on GPU; 1 turns merging off",
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        description="hold a request that found a slot free this long for company while "
        "another search runs (never on an idle replica)",
    )
    search_slots: PositiveInt | None = Field(
        None,
        description="searches a replica runs at once; default its cores / omp_threads on CPU, "
        "2 on GPU",
    )
    max_ongoing_requests: PositiveInt = 32
    mmap: bool = Field(
        False,
        description="memory-map the inverted lists of IVF indexes (local folders; faiss reads "
        "every other index, and the rest of an IVF one, into memory)",
    )
    reload_retry_s: PositiveFloat = Field(
        10.0, description="a replica whose index failed to load retries after this long"
    )
    health_check_period_s: PositiveFloat = Field(
        5.0, description="Serve's health check of each replica (reports, retirement, probe)"
    )
    unhealthy_after_s: PositiveFloat = Field(
        60.0,
        description="a replica holding no index this long fails its health check (replaced)",
    )
    faults: Faults | None = Field(None, description="fault injection (testing only)")
    in_router: bool = Field(
        False,
        description="every router replica holds all the shards itself: one hop per request "
        "and no shard deployments (router_replicas / router_autoscaling scale them); for an "
        "index that fits one replica",
    )

    @model_validator(mode="after")
    def _one_scaling(self) -> ShardOptions:
        if self.autoscaling is not None:
            if "num_replicas" in self.model_fields_set and self.num_replicas is not None:
                raise ValueError(
                    "shard.num_replicas and shard.autoscaling: autoscaling sets the replica "
                    "count (min_replicas .. max_replicas); give one of them"
                )
            self.num_replicas = None
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            raise ValueError("num_gpus above 1 must be a whole number of GPUs")
        if self.health_check_period_s > REPORT_TTL_S / 2:
            raise ValueError(
                f"health_check_period_s {self.health_check_period_s} > {REPORT_TTL_S / 2}: "
                f"replicas report on each health check and a report is stale after "
                f"{REPORT_TTL_S} s, so swaps could not commit and health would flap"
            )
        batch = self.max_batch_size or 1
        if batch > self.max_ongoing_requests and not self.in_router:
            raise ValueError(
                f"max_batch_size {batch} > max_ongoing_requests {self.max_ongoing_requests}: "
                "a replica never holds enough requests to fill a batch"
            )
        a = self.autoscaling
        if a is not None and a.target_ongoing_requests > self.max_ongoing_requests:
            raise ValueError(
                f"autoscaling.target_ongoing_requests {a.target_ongoing_requests} > "
                f"max_ongoing_requests {self.max_ongoing_requests}: the target is never reached"
            )
        return self

    @property
    def batch_size(self) -> int:
        """Most requests merged into one search: as set, else 16 on CPU and 32 on GPU."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return 32 if self.num_gpus > 0 else 16

    def slots(self) -> int:
        """Searches one replica runs at once: as set, else 2 on GPU (one on the GPU while
        the other is in its CPU part: a GPU index searches one call at a time, split over
        its GPUs) or the cores the replica may use over its OpenMP threads."""
        if self.search_slots is not None:
            return self.search_slots
        if self.num_gpus > 0:
            return 2
        return max(1, len(os.sched_getaffinity(0)) // self.omp_threads)

    def device(self) -> str | GpuOptions:
        """Where the replica puts its shards: "cpu", or its GPUs (Ray numbers them from 0)."""
        if self.num_gpus <= 0:
            return "cpu"
        g = self.gpu
        return GpuOptions(
            devices=tuple(range(max(1, int(self.num_gpus)))),
            multi_gpu=g.multi_gpu,
            float16=g.float16,
            use_cuvs=g.use_cuvs,
            temp_memory_mb=g.temp_memory_mb,
        )

    def actor_options(self, resources: dict[str, float] | None = None) -> dict[str, Any]:
        """``ray_actor_options`` of a replica holding shards (plus ``resources``)."""
        return {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "resources": {**(resources or {}), **self.resources},
            # every thread of the replica (searches run in a thread pool) starts with this
            # many OpenMP threads; more than the cores oversubscribes them badly
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(self.omp_threads)}},
        }

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        opts: dict[str, Any] = {
            "ray_actor_options": self.actor_options(),
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class Limits(Settings):
    """Request limits; violations are 400 (413 for the body)."""

    max_k: PositiveInt = Field(MAX_K, le=MAX_K)
    max_queries: PositiveInt = Field(1024, le=MAX_QUERIES)
    max_candidates: PositiveInt = Field(
        MAX_CANDIDATES, description="nq * k * k_factor per request: the work one request makes"
    )
    max_write_rows: PositiveInt = Field(
        4096, le=MAX_WRITE_ROWS, description="ids per upsert or delete request"
    )
    max_body_bytes: PositiveInt = 16 * 2**20
    default_deadline_ms: PositiveInt = 1000
    max_deadline_ms: PositiveInt = 60_000


class EmbeddingOptions(Settings):
    """The optional embedding deployment (``deployments.embedder``): ``{"texts": [...]}``
    searches and upserts are embedded by it, in the same application."""

    model: str = Field(
        "minilm",
        description="minilm: the bundled all-MiniLM-L6-v2 (sentence-transformers, 384-d); "
        "glove: the mean of GloVe 6B 50-d word vectors (the demo extra); else a "
        "sentence-transformers model folder",
    )
    device: str = Field("cpu", description="cpu, or cuda (sentence-transformers models)")
    normalize: bool = Field(True, description="unit vectors (cosine-ready)")
    num_replicas: PositiveInt = 1
    num_cpus: float = Field(0, ge=0)
    num_gpus: float = Field(0, ge=0)
    max_batch_size: PositiveInt = Field(64, description="texts of several requests per batch")
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_text_chars: PositiveInt = Field(20_000, description="longer texts are refused (400)")


COLLECTION_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
COLLECTIONS = "/v1/collections/"  # + NAME: a collection application's route prefix


class RecallOptions(Settings):
    """The online recall monitor (``deployments.monitor``): sampled live queries re-run
    exactly in the background over the same shard state, and what to do when recall drifts."""

    sample_rate: float = Field(
        0.005, ge=0.0, le=1.0, description="share of query rows re-run exactly; 0: off"
    )
    cpu_share: float = Field(
        0.02,
        gt=0.0,
        le=1000.0,
        description="exact re-runs take at most this share of the time each shard replica "
        "spends searching (samples past it are skipped and counted): the monitor's cost to "
        "throughput, bounded",
    )
    window_s: PositiveFloat = Field(900.0, description="measured recall covers this window")
    margin: float = Field(
        0.02, ge=0.0, lt=1.0, description="recall below the target by more than this drifts"
    )
    min_samples: PositiveInt = Field(
        100, description="samples in the window before recall is compared with its target"
    )
    auto_retune: bool = Field(
        False,
        description="re-tune on recent live queries when measured recall drifts below its "
        "target (a new version with the new curve, swapped in like a compaction)",
    )
    retune_queries: int = Field(
        1000,
        ge=50,
        description="a re-tune measures the curve on this many unfiltered live queries, all "
        "sampled after the drift was found (it waits for them)",
    )
    retune_cooldown_s: float = Field(
        1800.0, ge=0.0, description="the least time between two automatic re-tunes"
    )


class AppArgs(Settings):
    """Everything ``build_app`` needs."""

    index_uri: str = Field(..., description="index root (local path or pyarrow.fs URI)")
    index_version: str | None = Field(None, description="default: the root's CURRENT")
    collection: str | None = Field(
        None,
        pattern=COLLECTION_NAME,
        description="serve this index as collection NAME: its routes are /v1/collections/"
        "NAME/search... (the application's route_prefix must be /v1/collections/NAME); "
        "None: the default collection, at /v1/search...",
    )
    shard: ShardOptions = Field(default_factory=ShardOptions)
    embedding: EmbeddingOptions | None = Field(
        None, description="an embedding model for texts in (off by default)"
    )
    default_params: dict[str, Any] = Field(
        default_factory=dict, description="search overrides applied when a request has none"
    )
    limits: Limits = Field(default_factory=Limits)
    auth_token_env: str | None = Field(
        None, description="name of an env var holding a bearer token; unset: no auth"
    )
    compact_after_changes: PositiveInt | None = Field(
        None,
        description="compact online once the shards hold this many changed rows (delta rows "
        "and deleted or replaced ones); None: only on POST /v1/compact",
    )
    compact_retune: bool = Field(
        False,
        description="re-tune each online compaction before it is proposed (autotune on the "
        "compacted contents for the target the index was tuned for): deletes and a merged "
        "delta move the recall curve",
    )
    max_delta_rows: PositiveInt | None = Field(
        2_000_000,
        description="upserts are refused (503 delta_full) while the shards' deltas hold this "
        "many rows, and a compaction starts; None: no bound",
    )
    recall: RecallOptions = Field(
        default_factory=RecallOptions, description="the online recall monitor"
    )
    router_replicas: PositiveInt = 1
    router_autoscaling: Autoscaling | None = Field(
        None, description="instead of router_replicas (min_replicas >= 2 on clusters)"
    )
    router_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources of the router (node pinning)"
    )
    router_max_ongoing_requests: PositiveInt = 64
    router_max_queued_requests: int = Field(
        256, ge=-1, description="requests queued per caller before overload answers; -1: no limit"
    )
    replica_retries: int = Field(
        2, ge=0, description="a shard call whose replica died is retried on another replica"
    )
    access_log: bool = Field(
        False,
        description="Serve's access log line per request in every replica's log (about 2% "
        "of a single query's CPU in the router); metrics count requests either way",
    )
    overload_status: Literal[429, 503] = Field(503, description="HTTP status when overloaded")
    retry_after_s: PositiveInt = Field(1, description="Retry-After of overload answers")

    @model_validator(mode="after")
    def _one_router_scaling(self) -> AppArgs:
        if self.router_autoscaling is not None and "router_replicas" in self.model_fields_set:
            raise ValueError(
                "router_replicas and router_autoscaling: autoscaling sets the router's replica "
                "count (min_replicas .. max_replicas); give one of them"
            )
        return self

    @model_validator(mode="after")
    def _shards_in_router(self) -> AppArgs:
        """With ``shard.in_router`` the router's replicas hold the shards: the shard
        deployments' own replica and request settings would be silently ignored, so they
        are refused."""
        shard = self.shard
        if not shard.in_router:
            return self
        ignored = {"num_replicas", "autoscaling", "shards_per_replica", "max_ongoing_requests"}
        if ignored & shard.model_fields_set:
            raise ValueError(
                f"shard.in_router: the router's replicas hold every shard, so "
                f"shard.{', shard.'.join(sorted(ignored & shard.model_fields_set))} would be "
                "ignored: set router_replicas / router_autoscaling and "
                "router_max_ongoing_requests instead"
            )
        if (shard.max_batch_size or 1) > self.router_max_ongoing_requests:
            raise ValueError(
                f"shard.max_batch_size {shard.batch_size} > router_max_ongoing_requests "
                f"{self.router_max_ongoing_requests}: a replica never holds enough requests "
                "to fill a batch"
            )
        return self
