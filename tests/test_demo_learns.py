"""The demo chain learns: the demo-size corpus goes through download and encode, the demo's
tiny MicroDiT trains on the latent shards with the pipeline's own loop, and the evaluate step's
sampler draws COCO-val prompts; the classifier must find their colors far above chance. A
change that breaks learning in encode, the loader, the loss, EMA or the sampler fails here.
Slow (about 8 minutes on 2 cores): `make test` runs it, `make test-fast` does not.
"""

from __future__ import annotations

from benchmarks import demo_learning
from tasks.encode.tiny import torch_threads
from tasks.evaluate.attributes import chance

STEPS = 1800  # the demo's stage-2 steps: color is learned by then (docs/benchmarks.md)


def test_the_demo_chain_follows_its_prompts(s3_service):
    # Two threads, as `make demo` trains on this machine: the suite pins one elsewhere
    # (tests/model), and another thread count sums in another order and trains another model.
    with torch_threads(2):
        result = demo_learning.measure(STEPS)
    print(result)
    # Encode kept each image with its caption: decoded latents show the captioned scene.
    stored = result["latents_depict_captions"]
    assert stored["n"] >= 200
    assert stored["color"] >= 0.95 and stored["position"] >= 0.95, stored
    # Training learned from them. Color is the attribute the demo learns reliably (77-97 % in
    # the 1,800-step runs of docs/benchmarks.md); position swung between 31 % and 63 % across
    # those runs and shape stayed at chance, so neither is asserted. 60 % of ~35 seen prompts
    # at chance 1/4 has odds of about 1 in 100,000 (binomial, 21 of 35).
    seen = result["prompt_following"]["seen"]
    assert seen["n"] >= 30
    assert chance()["color"] == 0.25
    assert seen["color"] >= 0.6, seen
