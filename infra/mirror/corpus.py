"""A small generated corpus in each dataset's upstream format, with the defects real sources have.

Every image depicts its caption: one flat shape (square, circle, triangle) of one of four colors
in one quadrant of the image's central square (what the center crop keeps), on a flat background,
at the dataset's native sizes. Captions name those attributes in each dataset's own style: short
alt-text (CC3M), prompts (JourneyDB, DiffusionDB), descriptions (TextCaps, COCO, the SA-1B caption
file). The vocabulary and the held-out (shape, color) pairs live in demo/attributes.py,
which scores generated images against it; no training set shows a held-out pair, and COCO val
asks for them in about a quarter of its images.

Everything is derived from one seed, so two generations give the same bytes. URLs inside text
files use the placeholder host TOKEN; the server replaces it with its own address when serving,
so a corpus works on whatever port the mirror listens on.

Defects, by dataset (each counted under a failure reason by the download step):
  cc3m        404, 500, refused connection, corrupt JPEG, HTML served as .jpg, empty caption,
              non-UTF-8 caption bytes, images under 256 px
  sa1b        a truncated tar member, an expired (404) link
  textcaps    404, an image whose captions are all empty, a caption that is not valid UTF-8,
              a Flickr "photo unavailable" redirect; train and val splits and the image zip
  journeydb   an annotated image missing from its archive, a corrupt image, an empty prompt
  diffusiondb NSFW-flagged rows (image and prompt scores), a row missing from its zip; in both
              the 2M layout (PNG) and the Large one (WebP, two part folders)
  coco        404
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import uuid
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from demo.attributes import BACKGROUNDS, COLORS, DESCRIBE, HELD_OUT, POSITIONS, SHAPES, Scene

TOKEN = "http://mirror.invalid"
MARKER = "corpus.json"
VERSION = 3  # 2: DiffusionDB Large layout, TextCaps image zip and val split; 3: scenes
REFUSED_URL = "http://127.0.0.1:9/refused.jpg"  # the discard port: nothing listens there
# Caption templates per dataset style; {c} color, {s} shape, {p} position, {b} background.
STYLES = {
    "alt": ["{c} {s} in the {p} corner on {b}", "a {c} {s}, {p}, {b} backdrop",
            "{c} {s} at the {p} of a {b} frame"],
    "prompt": ["{c} {s} in the {p} corner, {b} background", "a {c} {s} at the {p}, plain {b} "
               "background", "minimal art, {c} {s}, {p} corner, {b} backdrop"],
    "describe": list(DESCRIBE),  # the report set's prompts read like these too
    "llava": ["The image shows a {c} {s} in the {p} corner against a plain {b} background.",
              "In this image, a {c} {s} is placed at the {p}, and the background is {b}."],
}


@dataclass(frozen=True)
class CorpusSize:
    """Images per dataset; `scale` multiplies them (benchmarks use a larger corpus)."""

    cc3m: int = 60
    sa1b_archives: int = 3
    sa1b_per_archive: int = 16
    textcaps: int = 40
    journeydb_archives: int = 2
    journeydb_per_archive: int = 25
    diffusiondb_parts: int = 2
    diffusiondb_per_part: int = 25
    coco: int = 40

    def scaled(self, scale: int) -> "CorpusSize":
        return CorpusSize(self.cc3m * scale, self.sa1b_archives, self.sa1b_per_archive * scale,
                          self.textcaps * scale, self.journeydb_archives,
                          self.journeydb_per_archive * scale, self.diffusiondb_parts,
                          self.diffusiondb_per_part * scale, self.coco * scale)


# The demo's corpus (what `make demo` downloads from the mirror service): JourneyDB and
# DiffusionDB at 400 images per archive/part and TextCaps at 600, about 2,500 captioned training
# images, so that the tiny model can learn shape, color and position from captions
# (docs/benchmarks.md): with the 175 of the default size it memorises, and COCO's descriptive
# prompts need descriptive training captions (TextCaps') beside the prompt-style majority. CC3M
# keeps the default size (its per-URL defects cost seconds each); the tests' corpora stay small.
DEMO_SIZE = CorpusSize(textcaps=600, journeydb_per_archive=400, diffusiondb_per_part=400)
SIZES = {"default": CorpusSize(), "demo": DEMO_SIZE}


def scene(rng: random.Random, held_out_share: float = 0.0) -> Scene:
    """A random scene; with held_out_share 0 never a held-out (shape, color) pair, else one in
    that share of the draws (COCO val)."""
    pairs = [(s, c) for s in SHAPES for c in COLORS]
    seen = [pair for pair in pairs if pair not in HELD_OUT]
    pool = sorted(HELD_OUT) if rng.random() < held_out_share else seen
    shape, color = rng.choice(pool)
    return Scene(shape, color, rng.choice(POSITIONS), rng.choice(sorted(BACKGROUNDS)))


def caption(rng: random.Random, item: Scene, style: str = "alt") -> str:
    template = rng.choice(STYLES[style])
    return template.format(c=item.color, s=item.shape, p=item.position, b=item.background)


def image_size(rng: random.Random, small_share: float = 0.15) -> tuple[int, int]:
    """(width, height): some short sides under 256 px, some above 512 px, ratios 0.6-1.7."""
    short = rng.randint(120, 250) if rng.random() < small_share else rng.randint(256, 760)
    long = int(short * rng.uniform(1.0, 1.7))
    return (short, long) if rng.random() < 0.5 else (long, short)


def make_image(rng: random.Random, size: tuple[int, int], item: Scene) -> Image.Image:
    """The scene at (width, height): the shape inside one quadrant of the central square (the
    part the center crop keeps), side 26-36 % of the short side, its center jittered by up to
    1.5 %, so at least 5 % of the side stays background around it."""
    width, height = size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    vertical, horizontal = item.position.split()
    cx = left + side * ((0.25 if horizontal == "left" else 0.75) + rng.uniform(-0.015, 0.015))
    cy = top + side * ((0.25 if vertical == "top" else 0.75) + rng.uniform(-0.015, 0.015))
    half = side * rng.uniform(0.26, 0.36) / 2
    image = Image.new("RGB", size, BACKGROUNDS[item.background])
    draw = ImageDraw.Draw(image)
    box = [cx - half, cy - half, cx + half, cy + half]
    fill = COLORS[item.color]
    if item.shape == "square":
        draw.rectangle(box, fill=fill)
    elif item.shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, format="PNG", compress_level=1)
    elif fmt == "WEBP":
        image.save(out, format="WEBP", lossless=True, quality=0, method=0)
    else:
        image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def jpeg(rng: random.Random, item: Scene) -> bytes:
    return encode(make_image(rng, image_size(rng), item))


def corrupt(data: bytes) -> bytes:
    """A JPEG cut in half: the header parses, the scan data ends early."""
    return data[: len(data) // 2]


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tar_bytes(members: list[tuple[str, bytes]], gzip: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gzip else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


# --- one generator per dataset ---------------------------------------------------------------


def cc3m(root: Path, rng: random.Random, n: int) -> None:
    """Train_GCC-training.tsv: caption<TAB>url per line, no header, as Google ships it."""
    base = f"{TOKEN}/cc3m/images"
    lines = []
    for row in range(n):
        item = scene(rng)
        text = caption(rng, item).encode()
        url = f"{base}/{row:05d}.jpg"
        defect = row % 30 if row < 30 else -1
        if defect == 3:
            url = f"{base}/missing-{row}.jpg"
        elif defect == 7:
            url = f"{TOKEN}/_status/500"
        elif defect == 11:
            url = REFUSED_URL
        elif defect == 15:
            write(root / "cc3m/images" / f"{row:05d}.jpg", corrupt(jpeg(rng, item)))
        elif defect == 19:
            text = b""
        elif defect == 23:
            text = "caf\u00e9 on a corner".encode("latin-1")
        elif defect == 27:
            write(root / "cc3m/images" / f"{row:05d}.jpg", b"<html>moved</html>")
        if defect not in (3, 7, 11, 15, 27):
            write(root / "cc3m/images" / f"{row:05d}.jpg", jpeg(rng, item))
        lines.append(text + b"\t" + url.encode())
    write(root / "cc3m/Train_GCC-training.tsv", b"\n".join(lines) + b"\n")


def sa1b(root: Path, rng: random.Random, archives: int, per_archive: int) -> None:
    """links.txt (file_name<TAB>cdn_link, header) and sa_NNNNNN.tar of sa_<id>.jpg + .json,
    plus captions.jsonl in the shape of a published LLaVA caption file (image 2's caption empty,
    image 3 missing)."""
    links = ["file_name\tcdn_link"]
    captions = []
    caption_rng = random.Random("sa1b-captions")  # its own stream: the images stay as they were
    image_id = 1
    for a in range(archives):
        name = f"sa_{a:06d}.tar"
        members = []
        for _ in range(per_archive):
            size, item = image_size(rng, small_share=0.0), scene(rng)
            record = {"image": {"image_id": image_id, "width": size[0], "height": size[1],
                                "file_name": f"sa_{image_id}.jpg"},
                      "annotations": [{"id": image_id * 10, "bbox": [0, 0, 10, 10],
                                       "area": 100, "segmentation": {"size": [size[1], size[0]],
                                                                     "counts": "0"}}]}
            members.append((f"sa_{image_id}.jpg", encode(make_image(rng, size, item))))
            members.append((f"sa_{image_id}.json", json.dumps(record).encode()))
            text = "" if image_id == 2 else caption(caption_rng, item, "llava")
            if image_id != 3:
                captions.append(json.dumps({"image_id": f"sa_{image_id}", "caption": text}))
            image_id += 1
        data = tar_bytes(members)
        if a == archives - 1:
            # Cut inside the jpg of the third-to-last image: a truncated tar member.
            cut = data.index(members[-6][0].encode()) + 512 + len(members[-6][1]) // 2
            data = data[:cut]
        write(root / "sa1b" / name, data)
        links.append(f"{name}\t{TOKEN}/sa1b/{name}")
    links.append(f"sa_{archives:06d}.tar\t{TOKEN}/sa1b/expired/sa_{archives:06d}.tar")
    write(root / "sa1b/links.txt", ("\n".join(links) + "\n").encode())
    write(root / "sa1b/captions.jsonl", ("\n".join(captions) + "\n").encode())
    # The same captions as PixArt-alpha/SAM-LLaVA-Captions10M ships them: sa_<id>.txt files.
    members = [(f"{json.loads(c)['image_id']}.txt", json.loads(c)["caption"].encode())
               for c in captions]
    write(root / "sa1b/SA1B_caption.tar.gz", tar_bytes(members, gzip=True))


def textcaps(root: Path, rng: random.Random, n: int, split: str = "train") -> None:
    """TextCaps_0.1_<split>.json: one `data` entry per caption, grouped by image_id. Image 3's
    Flickr URL redirects to Flickr's "photo unavailable" stand-in, as removed photos do."""
    entries = []
    for i in range(n):
        image_id = f"{rng.getrandbits(64):016x}"
        item = scene(rng)
        texts = [caption(rng, item, "describe") for _ in range(rng.randint(2, 5))]
        if i == 5:
            texts = ["", "  "]
        elif i == 8:
            texts[0] = "a sign reading \udcff"  # a lone surrogate: valid JSON, not UTF-8 text
        elif i == 9:
            texts = ["\udcfe\udcff"]
        if i != 2:
            write(root / "textcaps/images" / f"{image_id}.jpg", jpeg(rng, item))
        flickr = f"{TOKEN}/textcaps/images/{image_id}.jpg"
        if i == 3:
            flickr = f"{TOKEN}/_gone/textcaps/images/{image_id}.jpg"
        for caption_id, text in enumerate(texts):
            entries.append({
                "image_id": image_id, "image_classes": ["Sign"], "image_name": image_id,
                "flickr_original_url": flickr, "flickr_300k_url": flickr,
                "image_width": 0, "image_height": 0, "set_name": split,
                "image_path": f"train/{image_id}.jpg", "caption_id": caption_id,
                "caption_str": text, "caption_tokens": text.split(), "reference_strs": texts,
            })
    doc = {"dataset_type": split, "dataset_name": "textcaps", "data": entries}
    write(root / f"textcaps/TextCaps_0.1_{split}.json", json.dumps(doc).encode())


def textcaps_images_zip(root: Path) -> None:
    """train_val_images.zip as TextVQA ships it: train and val images under train_images/
    (image 2 of train, absent from the image folder, is absent here too)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted((root / "textcaps/images").glob("*.jpg")):
            info = zipfile.ZipInfo(f"train_images/{path.name}", date_time=(2019, 4, 1, 0, 0, 0))
            archive.writestr(info, path.read_bytes())
    write(root / "textcaps/train_val_images.zip", out.getvalue())


def journeydb(root: Path, rng: random.Random, archives: int, per_archive: int) -> None:
    """data/train/imgs/NNN.tgz of NNN/<id>.jpg and the annotation jsonl inside a .tgz."""
    lines = []
    for a in range(archives):
        folder = f"{a:03d}"
        members = []
        for i in range(per_archive):
            stem = f"{rng.getrandbits(96):024x}"
            item = scene(rng)
            prompt = caption(rng, item, "prompt") + ", cinematic lighting --ar 3:2"
            if a == 0 and i == 4:
                prompt = ""
            lines.append(json.dumps({"img_path": f"./{folder}/{stem}.jpg", "prompt": prompt,
                                     "Task2": {"Caption": caption(rng, item, "describe")}}))
            if a == 0 and i == 6:
                continue  # annotated, but absent from the archive
            data = jpeg(rng, item)
            members.append((f"{folder}/{stem}.jpg", b"\x00garbage" if i == 8 else data))
        write(root / f"journeydb/data/train/imgs/{folder}.tgz", tar_bytes(members, gzip=True))
    jsonl = ("\n".join(lines) + "\n").encode()
    write(root / "journeydb/data/train/train_anno_realease_repath.jsonl.tgz",
          tar_bytes([("train_anno_realease_repath.jsonl", jsonl)], gzip=True))


def diffusiondb(root: Path, rng: random.Random, parts: int, per_part: int,
                large: bool = False) -> None:
    """DiffusionDB 2M: metadata.parquet and images/part-NNNNNN.zip of <uuid>.png +
    part-NNNNNN.json. With `large`, DiffusionDB Large: metadata-large.parquet and lossless
    <uuid>.webp parts, the first half of the parts under diffusiondb-large-part-1/ and the rest
    numbered from 10001 under diffusiondb-large-part-2/, as upstream splits its 14,000 parts."""
    rows = []
    for index in range(1, parts + 1):
        part = index if not large or index <= (parts + 1) // 2 else 10000 + index
        name = f"part-{part:06d}"
        index_json = {}
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for i in range(per_part):
                ext = "webp" if large else "png"
                image_name = f"{uuid.UUID(int=rng.getrandbits(128), version=4)}.{ext}"
                size = rng.choice([(512, 512), (512, 768), (768, 512), (640, 640), (200, 300)])
                item = scene(rng)
                prompt = caption(rng, item, "prompt") + ", trending on artstation"
                image_nsfw = 0.9 if i % 9 == 3 else round(rng.uniform(0.0, 0.15), 4)
                prompt_nsfw = 0.5 if i % 11 == 5 else round(rng.uniform(0.0, 0.15), 4)
                rows.append({"image_name": image_name, "prompt": prompt, "part_id": part,
                             "seed": rng.getrandbits(31), "step": 50, "cfg": 7.0,
                             "sampler": 8, "width": size[0], "height": size[1],
                             "user_name": "u", "timestamp": 1660000000 + i,
                             "image_nsfw": image_nsfw, "prompt_nsfw": prompt_nsfw})
                if index == 1 and i == 2:
                    continue  # listed in the metadata, absent from the zip
                index_json[image_name] = {"p": prompt, "se": rows[-1]["seed"], "c": 7.0,
                                          "st": 50}
                archive.writestr(image_name, encode(make_image(rng, size, item),
                                                    "WEBP" if large else "PNG"))
            archive.writestr(f"{name}.json", json.dumps(index_json))
        folder = (f"diffusiondb-large-part-{1 if part <= 10000 else 2}" if large else "images")
        write(root / "diffusiondb" / folder / f"{name}.zip", out.getvalue())
    target = root / "diffusiondb" / ("metadata-large.parquet" if large else "metadata.parquet")
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), target)


def coco(root: Path, rng: random.Random, n: int) -> None:
    """annotations/captions_val2014.json and val2014/COCO_val2014_<id>.jpg."""
    images, annotations = [], []
    for i in range(n):
        image_id = 100 + i * 7
        file_name = f"COCO_val2014_{image_id:012d}.jpg"
        size, item = image_size(rng, small_share=0.0), scene(rng, held_out_share=0.25)
        images.append({"id": image_id, "file_name": file_name, "width": size[0],
                       "height": size[1], "coco_url": f"{TOKEN}/coco/val2014/{file_name}",
                       "flickr_url": f"{TOKEN}/coco/val2014/{file_name}", "license": 1})
        texts = rng.sample(STYLES["describe"], 5)
        for j, template in enumerate(texts):
            text = template.format(c=item.color, s=item.shape, p=item.position,
                                   b=item.background)
            annotations.append({"id": image_id * 10 + j, "image_id": image_id, "caption": text})
        if i != 1:
            write(root / "coco/val2014" / file_name, encode(make_image(rng, size, item)))
    doc = {"info": {"description": "generated mirror"}, "licenses": [], "images": images,
           "annotations": annotations}
    write(root / "coco/annotations/captions_val2014.json", json.dumps(doc).encode())


def generate(root: Path, seed: int = 0, size: CorpusSize = CorpusSize()) -> dict:
    """Write the whole corpus under `root` (and nothing outside it); returns its marker."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cc3m(root, rng, size.cc3m)
    sa1b(root, rng, size.sa1b_archives, size.sa1b_per_archive)
    textcaps(root, rng, size.textcaps)
    journeydb(root, rng, size.journeydb_archives, size.journeydb_per_archive)
    diffusiondb(root, rng, size.diffusiondb_parts, size.diffusiondb_per_part)
    coco(root, rng, size.coco)
    # Layouts added later draw from streams of their own: the files above keep their bytes.
    diffusiondb(root, random.Random(f"diffusiondb-large-{seed}"), max(2, size.diffusiondb_parts),
                size.diffusiondb_per_part, large=True)
    textcaps(root, random.Random(f"textcaps-val-{seed}"), max(10, size.textcaps // 4), "val")
    textcaps_images_zip(root)
    marker = {"version": VERSION, "seed": seed, "size": asdict(size)}
    # The marker is written last: its presence means the corpus is complete.
    (root / MARKER).write_text(json.dumps(marker, indent=2))
    return marker


def is_generated(root: Path, size: CorpusSize | None = None) -> bool:
    """Whether root holds a complete corpus of this VERSION (and of `size`, if given)."""
    path = root / MARKER
    if not path.exists():
        return False
    marker = json.loads(path.read_text())
    return marker.get("version") == VERSION and (size is None or marker.get("size") == asdict(size))
