"""The download step's data contract: the names under which other steps find what it wrote."""

from __future__ import annotations


def originals_dataset(dataset: str) -> str:
    """The raw dataset beside `dataset` holding its images as fetched (no filter, no re-encode):
    the COCO download writes it, and evaluate computes the FID reference statistics from it."""
    return f"{dataset}-original"
