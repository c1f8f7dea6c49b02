"""Training: flow matching for the DiT, the VAE, and the recipe of the bundled tiny model."""
