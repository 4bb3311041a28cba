"""Training: the JEPA model, masking, the streaming loader, the loop, checkpoints and the probe."""
