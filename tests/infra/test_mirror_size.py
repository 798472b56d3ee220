"""The mirror service serves the demo-size corpus (enough JourneyDB and DiffusionDB images for
the demo model to learn); a corpus of another size is regenerated, one of this size kept."""

from __future__ import annotations

import json
import tarfile

from infra.mirror.__main__ import main
from infra.mirror.corpus import DEMO_SIZE, MARKER, CorpusSize, is_generated
from infra.services import all_services


def test_the_service_serves_the_demo_size():
    mirror = next(s for s in all_services() if s.name == "mirror")
    assert mirror.command()[3:6] == ["serve", "--size", "demo"]


def test_a_corpus_of_another_size_is_regenerated(tmp_path):
    assert main(["generate", "--dir", str(tmp_path), "--size", "default"]) == 0
    assert is_generated(tmp_path, CorpusSize()) and not is_generated(tmp_path, DEMO_SIZE)
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["size"]["journeydb_per_archive"] == 25
    assert main(["generate", "--dir", str(tmp_path), "--size", "demo"]) == 0
    assert is_generated(tmp_path, DEMO_SIZE)
    archive = tmp_path / "journeydb" / "data" / "train" / "imgs" / "000.tgz"
    with tarfile.open(archive) as tar:
        images = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
    assert len(images) == DEMO_SIZE.journeydb_per_archive - 1  # the planted missing image
