"""The vsearch client: a vsearch service from Python over HTTP (httpx and numpy only).

    from vsearch import Client
    with Client("http://127.0.0.1:8000") as c:
        c.upsert([1, 2], vectors, [{"lang": "en"}, {"lang": "de"}])
        hits = c.search(query, k=5, filter={"lang": "en"})

``vsearch.langchain`` and ``vsearch.llama_index`` hold the framework stores.
"""

from vsearch._wire import Rows, SearchResult, WriteResult
from vsearch.client import AsyncClient, Client
from vsearch.errors import *  # noqa: F403  (the typed errors)
from vsearch.errors import VsearchError

__all__ = ["AsyncClient", "Client", "Rows", "SearchResult", "VsearchError", "WriteResult"]
