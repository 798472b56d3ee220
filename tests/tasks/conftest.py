"""Fixtures for the step tests: the dataset mirror on a free loopback port, demo params."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import pytest

from infra.mirror.corpus import generate
from infra.mirror.server import serve_in_thread
from infra.s3 import split_uri
from tasks.params import Params, load_params


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Iterator[str]:
    """A freshly generated corpus served in a background thread; yields its base URL.

    MB_MIRROR_URL points `{mirror}` in params (and subprocesses) at it for the session.
    """
    root = tmp_path_factory.mktemp("mirror")
    generate(root, seed=0)
    server, thread = serve_in_thread(root)
    previous = os.environ.get("MB_MIRROR_URL")
    os.environ["MB_MIRROR_URL"] = server.base_url
    yield server.base_url
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    if previous is None:
        os.environ.pop("MB_MIRROR_URL", None)
    else:
        os.environ["MB_MIRROR_URL"] = previous


@pytest.fixture
def demo_params(s3_prefix, mirror) -> Callable[..., Params]:
    """The demo profile writing under this test's S3 prefix; keywords replace download fields."""

    def make(**download_fields) -> Params:
        params = load_params(profile="demo")
        _, key = split_uri(s3_prefix)
        storage = dataclasses.replace(params.storage, raw_prefix=f"{key}/raw")
        download = dataclasses.replace(params.download, **download_fields)
        return dataclasses.replace(params, storage=storage, download=download)

    return make
