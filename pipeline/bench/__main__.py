"""``python -m pipeline.bench``: the gradient-plan benchmark (:mod:`pipeline.bench.plans`)."""

import sys

from pipeline.bench.plans import main

if __name__ == "__main__":
    sys.exit(main())
