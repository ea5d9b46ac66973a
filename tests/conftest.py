import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GLOG_v", "3")

from faultserver import FaultServer  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads or writes the user's cache, or sees their cnnctc settings."""
    for name in ("CNNCTC_MANIFEST", "CNNCTC_ASSET_URL", "CNNCTC_OFFLINE", "CNNCTC_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CNNCTC_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def serve():
    """Start FaultServers serving given bytes; all are stopped after the test."""
    servers = []

    def start(content, **kwargs):
        server = FaultServer(content, **kwargs).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def write_manifest(path, **changes):
    """A copy of the shipped manifest with some fields changed, written to ``path``."""
    data = json.loads((ROOT / "assets" / "manifest.json").read_text())
    data.update(changes)
    Path(path).write_text(json.dumps(data))
    return Path(path)


def subprocess_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({k: str(v) for k, v in extra.items()})
    return env
