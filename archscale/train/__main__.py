"""``python -m archscale.train`` / ``torchrun -m archscale.train``: the training entry point on one or many processes."""

from archscale.train.loop import main

main()
