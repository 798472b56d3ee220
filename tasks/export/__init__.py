"""MicroDiT as a diffusers pipeline: `DiffusionPipeline.from_pretrained(folder)` after export."""

import diffusers

from tasks.export.pipeline import EDMHeunScheduler, MicroDiTPipeline, MicroDiTTransformer

# DiffusionPipeline.from_pretrained looks the model_index.json class name up in the diffusers
# namespace (components are found by module path); a pipeline class from elsewhere must be
# placed there, or its code shipped in the folder and loaded with trust_remote_code.
diffusers.MicroDiTPipeline = MicroDiTPipeline

__all__ = ["EDMHeunScheduler", "MicroDiTPipeline", "MicroDiTTransformer"]
