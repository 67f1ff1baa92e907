"""Import rules: shards never imports Ray; a missing faiss names the extra to install."""

import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_importing_shards_never_imports_ray():
    proc = run_python(
        "import sys, shards, shards.cli, shards.metadata, shards.gpu, "
        "shards.tune_existing; print('ray' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_missing_faiss_names_the_extra():
    proc = run_python("import sys; sys.modules['faiss'] = None; import shards")
    assert proc.returncode != 0
    assert "'cpu' extra" in proc.stderr and "'gpu' extra" in proc.stderr
