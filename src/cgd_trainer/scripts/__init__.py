"""Scripts that a launcher runs (`accelerate launch -m cgd_trainer.scripts.train`, `torchrun -m ...`), as TRL's
`trl/scripts/`: they ship in the wheel, so a multi-GPU run needs no clone of the repository."""
