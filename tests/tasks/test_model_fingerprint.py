"""Keys follow the model a reference points at: a local model rebuilt in place (the demo's
trained VAE) gives new latent shard names and caption keys; a hub id is taken as it is."""

from __future__ import annotations

import dataclasses

from tasks.caption.keys import caption_key
from tasks.common.keys import model_fingerprint
from tasks.common.shards import ShardRecord
from tasks.encode.run import latent_shard_name
from tasks.params import load_params


def test_rebuilt_local_models_change_the_keys(tmp_path):
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text('{"latent_channels": 4}')
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v1")
    assert model_fingerprint("org/hub-model") == "org/hub-model"
    first = model_fingerprint(str(vae))
    assert first == model_fingerprint(str(vae)) and first.startswith(str(vae) + "@")

    params = load_params(profile="demo")
    params = dataclasses.replace(params, encode=dataclasses.replace(params.encode, vae=str(vae)),
                                 caption=dataclasses.replace(params.caption, model=str(vae)))
    raw = ShardRecord(name="00000-pabc", uri="s3://b/raw/cc3m/00000-pabc.tar", samples=1,
                      bytes=1, sha256="0" * 64)
    name, key = latent_shard_name(params, "cc3m", raw, None), caption_key(params.caption)
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v2")  # retrained
    assert model_fingerprint(str(vae)) != first
    assert latent_shard_name(params, "cc3m", raw, None) != name
    assert caption_key(params.caption) != key
