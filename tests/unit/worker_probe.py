"""Run code in a fresh interpreter as a production worker loads: its settings, no server contacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def probe_worker(code: str) -> Any:
    """``code`` ends by printing one JSON document; returns it."""
    # Settings a worker needs to start; nothing is contacted while modules load.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OFFERS_BROKER_URL": "redis://127.0.0.1:9/0",
        "OFFERS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "OFFERS_SANDBOX": "1",
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
