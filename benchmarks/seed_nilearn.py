"""nilearn's "Computing a ROI mask manually" example (no plots), for benchmarks.

Usage: python benchmarks/seed_nilearn.py BOLD LABELS MASK_VT

The example's code is ``tests/helpers/seed.py`` (nilearn and scipy only), the
reference of the parity tests.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.seed import seed_pipeline

if __name__ == "__main__":
    result = seed_pipeline(sys.argv[1], sys.argv[2], sys.argv[3])
    print("components:", result["n_labels"])
