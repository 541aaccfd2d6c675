"""Launch the trainer from one config: torchrun (elastic), the DeepSpeed launcher, or a SLURM batch job; one
exit-code contract on every path (0 done, 75 preempted, else failed)."""
