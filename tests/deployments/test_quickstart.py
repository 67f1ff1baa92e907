"""The README's quickstart, run as written against the service ``make serve`` starts: its
``docs`` application from serve_config.yaml over the collection scripts/demo.py creates."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deployments.conftest import deploy

pytestmark = [pytest.mark.ray]
ROOT = Path(__file__).resolve().parents[2]


def quickstart_code() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- quickstart.*?-->\s*```python\n(.*?)```\s*<!-- /quickstart -->", text, re.S
    )
    assert block, "the README has no quickstart block"
    return block.group(1)


def test_readme_quickstart_runs_against_make_serves_docs_collection(serve_base, tmp_path):
    spec = importlib.util.spec_from_file_location("demo", ROOT / "scripts" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    index = str(tmp_path / "docs-index")
    subprocess.run(
        [sys.executable, "-m", "shards", "create", "--out", index, *demo.DOCS_COLLECTION],
        check=True,
    )
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    (app,) = [a for a in config["applications"] if a["name"] == "docs"]
    deploy("docs", {**app["args"], "index_uri": index}, route_prefix=app["route_prefix"])

    code = quickstart_code()
    assert 'url="http://127.0.0.1:8000"' in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://127.0.0.1:8000", serve_base), "README", "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, out.getvalue()
    assert lines[0].split()[1] == "seine:" and lines[1].split()[1] == "nile:", lines

    # the same collection from LlamaIndex, the query text embedded by the service
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from deployments.embedder import GloveMean
    from vsearch.llama_index import VsearchVectorStore

    glove = GloveMean()
    store = VsearchVectorStore(url=serve_base, collection="docs")
    words = ["the cat sat on the mat", "stock prices fell", "the dog chased the cat"]
    store.add(
        [
            TextNode(text=t, id_=f"n{i}", embedding=glove.encode([t])[0].tolist())
            for i, t in enumerate(words)
        ]
    )
    got = store.query(VectorStoreQuery(query_str="markets and shares", similarity_top_k=1))
    assert got.ids == ["n1"]
    with pytest.raises(TypeError, match="unknown query option"):
        store.query(VectorStoreQuery(query_str="x"), alpha=0.5)
    store.clear()
