"""``python -m afa_d2.benchmark``: the command line of ``tools/benchmark.py``; the training and timing
workers the benchmark starts run this way."""
from afa_d2.benchmark.cli import main

if __name__ == "__main__":
    main()
