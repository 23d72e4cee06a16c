"""`python -m batchsize_lit`: the same as the `batchsize-lit` command."""

from batchsize_lit.cli import main

if __name__ == "__main__":
    main()
