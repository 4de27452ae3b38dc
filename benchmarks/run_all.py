"""Run every benchmark in order (the pipeline first: the others measure its run folder)."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
for script in ("pipeline_default.py", "cpu_vs_keras.py", "flop_floor.py", "harness_overhead.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(here / script)], check=True, cwd=here)
