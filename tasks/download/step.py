"""Download step entry points: `run` for the CLI and DVC, `download_dataset` for Prefect.

The flow maps `download_dataset` over `params.download.enabled()`; each call writes one
dataset's shards and manifest under s3://BUCKET/raw/<dataset>/ and publishes its summary.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.download.run import download, summary_markdown
from tasks.params import Params


@task(retries=2, retry_delay_seconds=30, task_run_name="download-{name}")
def download_dataset(params: Params, name: str) -> dict[str, Any]:
    """Download one dataset (resumable: a retry skips committed shards) and report it."""
    summary = download(params, name)
    create_markdown_artifact(key=f"download-{name}", markdown=summary_markdown(summary),
                             description=f"Download summary of {name}")
    return summary


def attempts_key(params: Params) -> tuple[str, str]:
    """Where this step's attempts are recorded (tasks/attempt.py): under the raw prefix, keyed
    by each enabled dataset's download plan, which decides its shards."""
    from tasks.common.keys import digest
    from tasks.download.core import plan_id

    dl = params.download
    return params.storage.raw_prefix, digest({d: plan_id(d, dl.source(d), dl)
                                              for d in dl.enabled()})


def run(params: Params) -> dict[str, Any]:
    """The whole step: every enabled dataset in turn; summaries by name (reports on stderr)."""
    summaries = {name: download(params, name) for name in params.download.enabled()}
    for summary in summaries.values():
        print(summary_markdown(summary), file=sys.stderr)
    return summaries
