"""torchrun / deepspeed / sbatch command lines from one config; not built yet."""
