"""LeNet-5 ablation suite: the paper network, its modern counterparts, Hydra configs and MLflow tracking."""
