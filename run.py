"""Train a LeNet-5 variant: `python run.py [experiment=paper] [model.pool=max ...]` (see docs/running.md)."""

from lenet5.cli import main

if __name__ == "__main__":
    main()
