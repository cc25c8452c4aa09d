"""``python -m hardctl``: the command line, also as ``torchrun -m hardctl`` launches it."""

from hardctl.cli import main

if __name__ == "__main__":
    main()
