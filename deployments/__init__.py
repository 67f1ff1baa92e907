"""The Ray Serve layer (shard and router deployments, HTTP ingress): not built yet.

It will stay thin and call into ``shards`` for every FAISS operation.
"""
