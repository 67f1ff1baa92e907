"""Ray jobs on Ray Data: the distributed build, from ``shards``' primitives (same artefact)."""
