"""Documents (text, a string id, free-form metadata) as the rows of a vsearch index: what
the LangChain and LlamaIndex stores share.

A document collection is an index with the metadata columns ``text`` (string), ``doc_id``
(string) and ``doc_meta`` (string: the document's metadata as JSON, returned as written);
create one with ``python -m shards create --dim D --metadata text:string,doc_id:string,
doc_meta:string[,more typed columns]``. A metadata key that is also a column of the index
(``lang``, ``year``...) is written to that column too, so filters can use it.

String ids become int64 ids by hashing (BLAKE2b, 63 bits): two different ids share one
with a probability near n**2 / 2**64 (one in 10**7 for 10**6 documents), and the original
id is kept in ``doc_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

TEXT, DOC_ID, DOC_META = "text", "doc_id", "doc_meta"
# requests the stores make stay within the service's default limits (4,096 rows a write,
# 1,024 ids a get) and well within its 30 s request timeout when it embeds the texts
ROWS_PER_WRITE = 1000
IDS_PER_GET = 1000
TEXTS_PER_WRITE = 64  # when the service embeds them (a CPU model: about 30 texts/s)


def chunks(items: list, size: int):
    for s in range(0, len(items), size):
        yield items[s : s + size]


REQUIRED = (TEXT, DOC_ID, DOC_META)


def int_id(doc_id: str) -> int:
    """The int64 id of a string id."""
    digest = hashlib.blake2b(str(doc_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def check_columns(columns: Mapping[str, str]) -> None:
    """ValueError unless the index has the columns a document collection needs."""
    missing = [c for c in REQUIRED if c not in columns]
    wrong = [c for c in REQUIRED if c in columns and columns[c] not in ("string", "large_string")]
    if missing or wrong:
        raise ValueError(
            f"this index is not a document collection: it needs string metadata columns "
            f"{list(REQUIRED)} (missing {missing}, not strings {wrong}); create one with "
            "python -m shards create --metadata text:string,doc_id:string,doc_meta:string"
        )


def rows(
    texts: Iterable[str],
    metadatas: Iterable[Mapping[str, Any] | None],
    ids: Iterable[str],
    columns: Iterable[str],
) -> list[dict[str, Any]]:
    """The metadata rows of documents: the required columns, and the metadata keys that are
    columns of the index."""
    extra = set(columns) - set(REQUIRED)
    out = []
    for text, meta, doc_id in zip(texts, metadatas, ids, strict=True):
        meta = dict(meta or {})
        row = {TEXT: text, DOC_ID: doc_id, DOC_META: json.dumps(meta, default=str)}
        row.update({k: v for k, v in meta.items() if k in extra})
        out.append(row)
    return out


def parts(row: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``(text, doc_id, metadata)`` of a stored row."""
    meta = json.loads(row.get(DOC_META) or "{}")
    doc_id = row.get(DOC_ID)
    return row.get(TEXT) or "", str(row.get("id")) if doc_id is None else doc_id, meta
