"""`python -m tasks import`: released reference MicroDiT checkpoints into our pretrained format."""
