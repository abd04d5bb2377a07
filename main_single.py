"""Train and evaluate Single on the dataset named in config/config.json (see --help)."""

import sys

from src.experiment import main

if __name__ == "__main__":
    sys.exit(main(method="Single"))
