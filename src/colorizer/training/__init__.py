"""The conditional GAN: models and their kernels, losses, optimizers, checkpoints, the training loop,
distributed ranks, and the evaluation that chooses between trainings."""
