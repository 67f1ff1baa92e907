"""A local multi-node Ray cluster in its own process, for the distributed-build tests.

``python tests/jobs/cluster.py`` starts a head and two worker nodes (``ray.cluster_utils``),
prints the GCS address on its first line and then obeys one command per stdin line:
``remove`` removes the last worker node (as if it died) and prints ``removed``; end of
input shuts the cluster down. A second Ray cluster cannot share a test session's own.
"""

from __future__ import annotations

import sys

from ray.cluster_utils import Cluster


def main() -> None:
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    for line in sys.stdin:
        if line.strip() == "remove" and workers:
            cluster.remove_node(workers.pop())
            print("removed", flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main()
