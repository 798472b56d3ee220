"""One dataset's download end to end: plan, fetch, shard, manifest, summary."""

from __future__ import annotations

import time
from typing import Any, Callable

from tqdm import tqdm

from tasks.common.shards import done_records, versioned_uri, write_manifest
from tasks.download import cc3m, coco, diffusiondb, journeydb, sa1b, textcaps
from tasks.download.core import Job, add_stats, empty_stats, plan_id, transfer_for
from tasks.params import Params

READERS: dict[str, Callable[[Job, Any], dict[str, Any]]] = {
    "cc3m": cc3m.download,
    "sa1b": sa1b.download,
    "textcaps": textcaps.download,
    "journeydb": journeydb.download,
    "diffusiondb": diffusiondb.download,
    "coco": coco.download,
}


def raw_prefix(params: Params, dataset: str) -> str:
    """s3://BUCKET/<raw_prefix>/<dataset>: where a dataset's raw shards and manifest live."""
    return params.storage.uri(params.storage.raw_prefix, dataset)


def download(params: Params, dataset: str) -> dict[str, Any]:
    """Download one dataset into its raw prefix; a rerun skips committed shards."""
    source = params.download.source(dataset)
    prefix = raw_prefix(params, dataset)
    start = time.monotonic()
    with tqdm(desc=dataset, unit="img") as bar:
        job = Job(dataset, prefix, params.download, plan_id(dataset, source, params.download),
                  done_records(prefix), bar, transfer=transfer_for(params.download))
        outcome = READERS[dataset](job, source)
    seconds = time.monotonic() - start
    total = empty_stats()
    for record in job.done.values():
        total = add_stats(total, record.meta["stats"])
    this_run = empty_stats()
    for name in job.written:
        this_run = add_stats(this_run, job.done[name].meta["stats"])
    rate = total["succeeded"] / total["attempted"] if total["attempted"] else 0.0
    stats = {**total, "success_rate": round(rate, 4), "plan": job.plan, **outcome}
    manifest = write_manifest(dataset, prefix, stats,
                              names=[r.name for r in job.done.values()])
    return {
        "dataset": dataset,
        "manifest": versioned_uri(manifest),  # immutable: DVC sees a data change
        "shards_sha256": {s.name: s.sha256 for s in manifest.shards},
        "samples": manifest.samples,
        "shards": len(manifest.shards),
        "shards_written": len(job.written),
        "shards_skipped": len(job.skipped),
        **stats,
        "seconds": round(seconds, 2),
        "attempted_this_run": this_run["attempted"],
        "images_per_s": round(this_run["attempted"] / seconds, 2) if seconds > 0 else 0.0,
        # Retries, resumes, rate limits and archive bytes of this run (not stored per shard).
        "network": job.transfer.stats.snapshot(),
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """The per-dataset report published as a Prefect artifact."""
    lines = [
        f"# Download: {summary['dataset']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| samples in manifest | {summary['samples']} |",
        f"| attempted | {summary['attempted']} |",
        f"| succeeded | {summary['succeeded']} |",
        f"| success rate | {summary['success_rate']:.1%} |",
        f"| shards (written / skipped) | {summary['shards']} "
        f"({summary['shards_written']} / {summary['shards_skipped']}) |",
        f"| complete | {summary['complete']} |",
        f"| seconds | {summary['seconds']} |",
        f"| images/s this run | {summary['images_per_s']} |",
        f"| manifest | `{summary['manifest']}` |",
        "",
        "| failure reason | count |",
        "|---|---|",
    ]
    lines += [f"| {reason} | {count} |" for reason, count in summary["failed"].items()]
    if not summary["failed"]:
        lines.append("| (none) | 0 |")
    for archive, reason in summary.get("archives_failed", {}).items():
        lines.append(f"| archive {archive}: {reason} | - |")
    network = summary.get("network") or {}
    if network:
        lines += ["", "| network (this run) | count |", "|---|---|"]
        lines += [f"| {name} | {count} |" for name, count in network.items()]
    return "\n".join(lines) + "\n"
