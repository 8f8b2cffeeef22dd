"""Put this checkout's ``idap`` first on ``sys.path``: a job then runs the code the workflow
hashed (rules/common.smk), whether or not idap is installed in the job's environment (a
conda env from envs/idap.yaml holds only the third-party packages)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
