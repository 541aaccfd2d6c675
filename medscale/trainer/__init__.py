"""Self-supervised trainers (MAE, SimCLR, MoCo, BYOL, SwAV) on DeepSpeed; not built yet."""
