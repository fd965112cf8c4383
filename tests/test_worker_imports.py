"""The vLLM worker runs in vLLM's own environment, which has no pandas or scipy: it must import without them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pandas", "scipy", "matplotlib"):
            raise ImportError("not installed in vLLM's environment: " + name)
sys.meta_path.insert(0, Block())
import archscale.bench.vllm_worker
print("ok")
'''


def test_the_vllm_worker_imports_without_pandas_scipy_or_matplotlib():
    result = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
