"""The demo chain learns: the demo-size corpus goes through download and encode (the session's
shared corpus), the demo's tiny MicroDiT trains on the latent shards with the pipeline's own
loop, and the evaluate step's sampler draws COCO-val prompts; the classifier must find their colors far above chance. A
change that breaks learning in encode, the loader, the loss, EMA or the sampler fails here.
Slow (about 8 minutes on 2 cores): `make test` runs it, `make test-fast` does not.
"""

from __future__ import annotations

from benchmarks import demo_learning
from demo.attributes import chance
from tasks.encode.tiny import torch_threads

STEPS = 1800  # three quarters of the demo's stage 2: what the suite can afford (~8 min)


def test_the_demo_chain_follows_its_prompts(demo_corpus):
    # Two threads, as `make demo` trains on this machine: the suite pins one elsewhere
    # (tests/model), and another thread count sums in another order and trains another model.
    # The session's demo corpus (tests/corpus.py): its download and encode find every shard
    # committed; the runs go under its prefix too.
    with torch_threads(2):
        result = demo_learning.measure(STEPS, key=demo_corpus.key)
    print(result)
    # Encode kept each image with its caption: decoded latents show the captioned scene.
    stored = result["latents_depict_captions"]
    assert stored["n"] >= 200
    assert stored["color"] >= 0.95 and stored["position"] >= 0.95, stored
    assert stored["shape"] >= 0.9, stored  # 98-99 %: the VAE and the classifier keep shape
    # Training learned from them. Color is the attribute learned in every 1,800-step run of
    # docs/benchmarks.md (80-97 %). With the present code two runs drew position 80 % and 43 %
    # (the second in a fresh-clone CI rehearsal) and all three 34 % and 11 %, so neither is
    # asserted: a bar on them would fail by chance, not by a broken change. 60 % of ~35 seen
    # prompts at chance 1/4 has odds of about 1e-5 (21 of 35).
    seen = result["prompt_following"]["seen"]
    assert seen["n"] >= 30
    assert chance()["color"] == 0.25
    assert seen["color"] >= 0.6, seen
