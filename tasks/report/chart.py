"""Report charts: where the money went (each step's cost, actual beside planned) and FID
against the images seen by each scored stage."""

from __future__ import annotations

import io
from typing import Any

from tasks.report.ledger import LedgerRow


def cost_chart(rows: list[LedgerRow], planned: dict[str, dict[str, float]]) -> bytes:
    """PNG bytes: one pair of bars per step (actual, planned), in US dollars."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a PNG buffer
    from matplotlib import pyplot as plt

    steps = [r.step for r in rows]
    actual = [r.cost_usd for r in rows]
    plan = [planned.get(s, {}).get("cost_usd", 0.0) for s in steps]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    x = range(len(steps))
    ax.bar([i - 0.2 for i in x], actual, width=0.4, label="actual")
    ax.bar([i + 0.2 for i in x], plan, width=0.4, label="planned")
    ax.set_xticks(list(x), steps)
    ax.set_ylabel("USD")
    ax.set_title(f"cost per step: ${sum(actual):,.4g} actual, ${sum(plan):,.4g} planned")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def planned_markdown(rows: list[LedgerRow], planned: dict[str, dict[str, float]]) -> str:
    lines = ["| step | planned device-hours | actual device-hours | planned USD | actual USD |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        p = planned.get(r.step, {})
        lines.append(f"| {r.step} | {p.get('device_hours', 0.0):.4f} | {r.device_hours:.4f} | "
                     f"{p.get('cost_usd', 0.0):.4f} | {r.cost_usd:.4f} |")
    return "\n".join(lines)


def fid_chart(points: list[dict[str, Any]]) -> bytes:
    """PNG bytes: FID of each scored stage against images seen (tasks.report.summary.fid_curve)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    seen = [p["images_seen"] for p in points]
    ax.plot(seen, [p["fid"] for p in points], "o-")
    for p in points:
        ax.annotate(p["stage"], (p["images_seen"], p["fid"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("images seen")
    ax.set_ylabel("FID")
    ax.set_title("FID of each scored stage against images seen")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
