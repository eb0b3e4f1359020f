"""``python -m moorelab``: the same command line as ``moorelab`` (torchrun starts workers this way:
``torchrun ... -m moorelab train ...``)."""

from moorelab.cli import main

if __name__ == "__main__":
    main()
