"""The Ray Serve layer: shard and router deployments, the HTTP ingress and the handle client.

It stays thin and calls into ``shards`` for every FAISS operation.
"""
