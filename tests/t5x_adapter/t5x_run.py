"""Running t5x's own scripts from the T5X integration tests (import after
`pytest.importorskip("t5x")`)."""

import os
import subprocess
import sys

import t5x

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T5X_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(t5x.__file__)))


def run_t5x(script, *flags, timeout=900):
    """`python -m t5x.<script>` with the repository's gin files; its log (stderr + stdout)."""
    cmd = [sys.executable, "-m", f"t5x.{script}", f"--gin_search_paths={T5X_ROOT},{REPO}", *flags]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr + out.stdout
