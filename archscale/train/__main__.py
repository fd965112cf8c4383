"""``python -m archscale.train`` / ``torchrun -m archscale.train``: ``archscale train`` on one or many processes.

An entry file, like :mod:`archscale.__main__`: it sits above every package and hands its arguments to the CLI.
"""

import sys

from archscale.cli import main

sys.argv = ["archscale", "train", *sys.argv[1:]]
main()
