"""`python -m benchmarks.compare`: see benchmarks/compare/cli.py."""

from benchmarks.compare.cli import main

if __name__ == "__main__":
    main()
