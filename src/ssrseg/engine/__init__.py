"""Engine: training loop, inference, checkpoints and post-processing (dense CRF)."""
