"""Command line of the dataset mirror; `serve` runs in the foreground until signalled."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.mirror.corpus import SIZES, generate, is_generated
from infra.mirror.server import MirrorServer
from infra.settings import ports


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m infra.mirror",
                                 description="generate or serve the local dataset mirror")
    ap.add_argument("command", choices=("generate", "serve"))
    ap.add_argument("--dir", type=Path, required=True, help="corpus folder (all writes go here)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=1, help="multiply the images per dataset")
    ap.add_argument("--size", choices=sorted(SIZES), default="default",
                    help="images per dataset: the tests' default or the demo's (more JourneyDB "
                         "and DiffusionDB, so the demo model can learn from its captions)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=None, help="default: MB_MIRROR_PORT / 18600")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.scale < 1:
        print("--scale must be >= 1", file=sys.stderr)
        return 2
    size = SIZES[args.size].scaled(args.scale)
    if args.command == "generate" or not is_generated(args.dir, size):
        generate(args.dir, args.seed, size)
        print(f"corpus written to {args.dir}", flush=True)
    if args.command == "serve":
        server = MirrorServer(args.dir, args.host, args.port or ports().mirror, log_requests=True)
        print(f"serving {args.dir} at {server.base_url}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
