"""The classifier under study: architectures, layers by name, the checkpoint file, training."""
