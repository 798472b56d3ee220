"""Download step: the body `run(params, driver)` that the CLI/DVC and the flow both call.

Each enabled dataset in turn (`download_dataset`) writes its shards and manifest under
s3://BUCKET/raw/<dataset>/, and its summary is published.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from tasks.common.driver import Driver
from tasks.download.run import download, summary_markdown
from tasks.params import Params


@task(retries=2, retry_delay_seconds=30, task_run_name="download-{name}")
def download_dataset(params: Params, name: str) -> dict[str, Any]:
    """Download one dataset (resumable: a retry skips committed shards)."""
    return download(params, name)


def attempts_key(params: Params) -> tuple[str, str]:
    """Where this step's attempts are recorded (tasks/attempt.py): under the raw prefix, keyed
    by each enabled dataset's download plan, which decides its shards."""
    from tasks.common.keys import digest
    from tasks.download.core import plan_id

    dl = params.download
    return params.storage.raw_prefix, digest({d: plan_id(d, dl.source(d), dl)
                                              for d in dl.enabled()})


def run(params: Params, driver: Driver) -> dict[str, Any]:
    """The whole step: every enabled dataset in turn, in this thread (img2dataset installs
    signal handlers, which Python allows only in the main thread; at scale each dataset is its
    own distributed img2dataset job). Summaries by name."""
    summaries = {}
    for name in params.download.enabled():
        summaries[name] = driver.task(download_dataset, params, name)
        driver.publish(f"download-{name}", summary_markdown(summaries[name]),
                       f"Download summary of {name}")
    return summaries
