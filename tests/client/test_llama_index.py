"""The LlamaIndex store's translations, without a service: its filters mean what LlamaIndex
means (rows matched by ``shards.filters`` equal rows matched by LlamaIndex's own
``build_metadata_filter_fn``) and its similarities rank higher-first."""

from __future__ import annotations

import pyarrow as pa
import pytest
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator
from llama_index.core.vector_stores.types import MetadataFilter as F
from llama_index.core.vector_stores.types import MetadataFilters as Fs
from llama_index.core.vector_stores.utils import build_metadata_filter_fn

from shards.filters import parse_filter
from vsearch.llama_index import operator_form

ROWS = [
    {"lang": "en", "year": 2020, "title": "hello world", "tags": ["a", "b"]},
    {"lang": "en", "year": 2019, "title": "foo", "tags": ["b"]},
    {"lang": "de", "year": 2020, "title": "", "tags": []},
    {"lang": "de", "year": 2018, "title": None, "tags": None},
    {"lang": "fr", "year": 2021, "title": "bar", "tags": ["c", "a"]},
]
SCHEMA = pa.schema(
    [
        ("lang", pa.string()),
        ("year", pa.int64()),
        ("title", pa.string()),
        ("tags", pa.list_(pa.string())),
    ]
)
COLUMNS = {f.name: str(f.type) for f in SCHEMA}  # as /v1/stats names them
NOT, OR = FilterCondition.NOT, FilterCondition.OR
INNER = Fs(filters=[F(key="lang", value="en"), F(key="lang", value="fr")], condition=NOT)
CASES = {
    "not one": Fs(filters=[F(key="lang", value="en")], condition=NOT),
    "not two": Fs(filters=[F(key="lang", value="en"), F(key="year", value=2020)], condition=NOT),
    "not three": Fs(
        filters=[
            F(key="lang", value="fr"),
            F(key="year", value=2019),
            F(key="year", value=2018, operator=FilterOperator.LTE),
        ],
        condition=NOT,
    ),
    "or": Fs(filters=[F(key="lang", value="fr"), F(key="year", value=2019)], condition=OR),
    "is empty text": Fs(filters=[F(key="title", value=None, operator=FilterOperator.IS_EMPTY)]),
    "is empty list": Fs(filters=[F(key="tags", value=None, operator=FilterOperator.IS_EMPTY)]),
    "contains in a list": Fs(filters=[F(key="tags", value="a", operator=FilterOperator.CONTAINS)]),
    "any in a list": Fs(filters=[F(key="tags", value=["c", "b"], operator=FilterOperator.ANY)]),
    "all in a list": Fs(filters=[F(key="tags", value=["a", "b"], operator=FilterOperator.ALL)]),
    "nin": Fs(filters=[F(key="lang", value=["en", "de"], operator=FilterOperator.NIN)]),
}


def matched(filters: Fs) -> list[int]:
    table = pa.Table.from_pylist(ROWS, schema=SCHEMA)
    mask = parse_filter(operator_form(filters, COLUMNS), SCHEMA).mask(table)
    return [i for i, hit in enumerate(mask.tolist()) if hit]


def reference(filters: Fs) -> list[int]:
    return [i for i in range(len(ROWS)) if build_metadata_filter_fn(ROWS.__getitem__, filters)(i)]


@pytest.mark.parametrize("name", CASES)
def test_rows_matched_are_the_rows_llama_index_matches(name):
    assert matched(CASES[name]) == reference(CASES[name])


def test_a_nested_not_means_none_of_its_filters():
    """LlamaIndex's reference does not take nested filters: the rows of both levels."""
    newer = Fs(filters=[F(key="year", value=2019, operator=FilterOperator.GTE)])
    want = sorted(set(reference(newer)) & set(reference(INNER)))
    assert matched(Fs(filters=[*newer.filters, INNER])) == want == [2]


@pytest.mark.parametrize("op", [FilterOperator.CONTAINS, FilterOperator.ANY, FilterOperator.ALL])
def test_text_matching_on_a_plain_column_is_refused_not_turned_into_equality(op):
    value = "world" if op == FilterOperator.CONTAINS else ["world"]
    with pytest.raises(ValueError, match="list columns only"):
        operator_form(Fs(filters=[F(key="title", value=value, operator=op)]), COLUMNS)


def test_l2_distances_become_similarities_higher_first():
    """LlamaIndex reads ``similarities`` higher-first (``similarity_cutoff`` keeps scores
    above it): squared L2 distances went out as they are, so a cutoff dropped the nearest."""
    from vsearch.llama_index import similarities

    got = similarities("l2", [0.0, 0.5, 2.0])  # nearest first, as the service answers
    assert got == sorted(got, reverse=True) and got[0] == 1.0 and abs(got[2]) < 1e-12
    assert similarities("cosine", [0.9, 0.2]) == [0.9, 0.2]
    assert similarities("ip", [3.0, -1.0]) == [3.0, -1.0]


def test_document_keys_mean_the_nodes_document():
    """LlamaIndex's node metadata names the document "doc_id" and "document_id" too
    (``node_to_metadata_dict``); vsearch's doc_id column holds node ids, so a filter on the
    document under those names matched nothing."""
    for key in ("doc_id", "document_id", "ref_doc_id"):
        got = operator_form(Fs(filters=[F(key=key, value="doc-1")]), COLUMNS)
        assert got == {"ref_doc_id": {"$eq": "doc-1"}}
