"""`python -m tasks sample`: images from prompts with a trained or imported MicroDiT."""
