"""Training data: the synthetic clips the bundled tiny model is trained on."""
