"""``python -m attrib_bench``: the ``attrib-bench`` command line (where no script is on PATH)."""

from attrib_bench.cli import main

if __name__ == "__main__":
    main()
