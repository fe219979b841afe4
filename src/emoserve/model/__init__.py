"""The emotion2vec network (plain PyTorch), its checkpoints, and the model hub."""
