"""``python -m pipeline.bench``: the gradient-plan benchmark (:mod:`pipeline.bench.plans`)."""

from pipeline.bench.plans import main
from pipeline.config import run_cli

if __name__ == "__main__":
    run_cli(main)
