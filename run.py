"""Train a LeNet-5 variant: `python run.py [experiment=paper] [model.pool=max ...]` (see README)."""

from lenet5.cli import main

if __name__ == "__main__":
    main()
