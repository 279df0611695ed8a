"""`batchrec report RUN`: one self-contained HTML page about a job's run, for people judging a night.

    batchrec report batchrec-workspace/runs/quickstart/dt=2026-11-24     # → RUN/report.html

RUN is a run directory of `batchrec run` (the one holding run.json); `batchrec run` writes the page
there after every run. Everything is read from the published artifacts, nothing is recomputed but
counts over the published lists; the page needs no network (inline SVG and CSS). Sections:
- the run: status, the quality gate, every stage's time and output;
- training: loss and valid NDCG@10 / HR@10 per epoch, the best epoch (the early-stopping point) marked;
- test metrics of the model and the popularity baseline at k = 1…50 (HR and NDCG), with the protocol;
- the published lists (a sample of up to `sample` users): catalogue coverage, the share of
  recommendations that go to the most popular 1 % / 10 % of items, the long tail, the scores, and
  how many users got the fallback list;
- stability against the previous published date: overlap@k of each user's two lists, and the users
  whose list changed completely;
- the FAISS index's recall and QPS, when one was built.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchrec import log, schema, storage, workspace
from batchrec.errors import UserError

_log = log.get("report")
REPORT = "report.html"
RUN_MANIFEST = "run.json"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


@dataclass
class ReportConfig:
    run: str  # a run directory of `batchrec run` (holding run.json)
    out: str | None = None  # the HTML file; default: {run}/report.html
    sample: int = 200_000  # users of the published lists the list statistics are computed on

    def validate(self) -> list[str]:
        return [] if self.sample >= 1 else ["sample must be ≥ 1"]


def run(cfg: ReportConfig) -> str:
    """Write the report; returns its URL."""
    manifest_url = storage.join(cfg.run, RUN_MANIFEST)
    if not storage.exists(manifest_url):
        raise UserError(
            "no run manifest (run.json) here", where=cfg.run, fix="pass a run directory of `batchrec run`"
        )
    run_info = storage.read_json(manifest_url)
    urls = {s["stage"]: s.get("url") for s in run_info["stages"] if s["status"] in ("ran", "skipped")}
    sections = [_run_section(run_info)]
    if urls.get("train"):
        sections.append(_training_section(urls["train"]))
    if urls.get("evaluate") and storage.exists(storage.join(urls["evaluate"], "evaluation.json")):
        sections.append(
            _evaluation_section(storage.read_json(storage.join(urls["evaluate"], "evaluation.json")))
        )
    if urls.get("score"):
        sections += _lists_sections(urls["score"], urls.get("prepare"), cfg.sample)
    if urls.get("index") and storage.exists(storage.join(urls["index"], "metadata.json")):
        sections.append(_index_section(storage.read_json(storage.join(urls["index"], "metadata.json"))))
    out = cfg.out or storage.join(cfg.run, REPORT)
    title = f"batchrec · {run_info['job']} · {run_info['date']}"
    storage.write_bytes(out, _page(title, sections).encode())
    _log.info("report → %s", out)
    return out


# ---------------------------------------------------------------------------------------------
# Sections: each returns an HTML fragment.


def _run_section(r: dict[str, Any]) -> str:
    rows = []
    for s in r["stages"]:
        figs = ", ".join(f"{k}={_num(v)}" for k, v in (s.get("figures") or {}).items())
        note = f" ({html.escape(s['note'])})" if s.get("note") else ""
        rows.append([s["stage"], s["status"], f"{s.get('seconds', 0):.1f} s", html.escape(figs) + note])
    gate = next((s for s in r["stages"] if s["stage"] == "gate"), None)
    verdict = f"quality gate: <b>{gate['status']}</b>" if gate else ""
    head = f"<p>run <code>{html.escape(r['run_id'])}</code> — status <b>{r['status']}</b>. {verdict}</p>"
    return _section("The run", head + _table(["stage", "status", "time", "figures"], rows))


def _training_section(checkpoint_url: str) -> str:
    from batchrec import checkpoint

    lines_url = checkpoint_url.rstrip("/") + ".metrics.jsonl"
    if not storage.exists(lines_url):
        return _section("Training", "<p>no per-epoch record (a model fit without gradients).</p>")
    records = [json.loads(line) for line in storage.read_bytes(lines_url).decode().splitlines()]
    meta = checkpoint.read_meta(checkpoint_url)
    best = meta.get("metrics", {}).get("valid", {}).get("epoch")
    epochs = [r["epoch"] for r in records]
    loss = line_chart({"training loss": (epochs, [r["loss"] for r in records])}, "epoch", "loss", mark_x=best)
    quality = line_chart(
        {
            "valid NDCG@10": (epochs, [r["valid_NDCG@10"] for r in records]),
            "valid HR@10": (epochs, [r["valid_HR@10"] for r in records]),
        },
        "epoch",
        "metric",
        mark_x=best,
    )
    text = (
        f"<p>{meta.get('model')} — {len(records)} epochs; best valid NDCG@10 "
        f"{_num(meta.get('metrics', {}).get('valid', {}).get('valid_NDCG@10'))} at epoch {best} "
        "(the dashed line: the checkpoint that was kept; training stopped when patience ran out).</p>"
    )
    return _section("Training", text + _row(loss, quality))


def _evaluation_section(e: dict[str, Any]) -> str:
    text = (
        f"<p>{e['split']} split, {e['users']:,} users, seen items: {e['exclude_seen']}. "
        f"<small>{html.escape(e.get('protocol', ''))}</small></p>"
    )
    keys = list(e["metrics"])
    table = _table(
        ["", *keys],
        [
            [e["model"], *(_num(e["metrics"][k]) for k in keys)],
            ["pop", *(_num(e["baseline"]["metrics"][k]) for k in keys)],
        ],
    )
    charts = ""
    if e.get("curves"):
        c = e["curves"]
        charts = _row(
            *(
                line_chart(
                    {e["model"]: (c["k"], c["model"][m]), "popularity": (c["k"], c["pop"][m])}, "k", f"{m}@k"
                )
                for m in ("HR", "NDCG")
            )
        )
    return _section("Test metrics, model and popularity", text + table + charts)


def _lists_sections(score_run: str, data_url: str | None, sample: int) -> list[str]:
    import pyarrow.compute as pc

    m = storage.read_json(storage.join(score_run, schema.MANIFEST))
    topk = _sample(storage.read_parquet(workspace.table_url(score_run, schema.TOPK)), sample)
    if m.get("topk_layout") == "exploded":
        return [
            _section("The published lists", "<p>(list statistics are computed on the `lists` layout)</p>")
        ]
    items = pc.list_flatten(topk.column("item_ids"))
    n_items = m["rows"]["items"]
    fallback = (
        int(pc.sum(pc.equal(topk.column("source"), "fallback")).as_py() or 0)
        if "source" in topk.column_names
        else 0
    )
    stats = [
        ["users in the sample", f"{topk.num_rows:,} of {m['rows']['users']:,}"],
        ["catalogue coverage", f"{len(pc.unique(items)) / n_items:.1%} of {n_items:,} items"],
        ["users given the fallback list", f"{fallback:,}"],
    ]
    charts = []
    if data_url:
        share, tail = _popularity(data_url, items, n_items)
        stats += [["recommendations to the most popular 1 % of items", f"{share[0]:.1%}"],
                  ["… to the most popular 10 %", f"{share[1]:.1%}"]]  # fmt: skip
        charts.append(
            bar_chart(
                [f"≤{10 * i + 10}%" for i in range(10)],
                tail,
                "item popularity percentile (0 = most popular)",
                "share of recommendations",
            )
        )
    scores = pc.list_flatten(topk.column("scores")).drop_null().to_numpy()
    if len(scores):
        counts, edges = np.histogram(scores, bins=20)
        charts.append(bar_chart([f"{x:.2f}" for x in edges[:-1]], counts / counts.sum(), "score", "share"))
    out = [_section(f"The published lists ({m['date']})", _table(["", ""], stats) + _row(*charts))]
    out.append(_stability_section(score_run, m, topk))
    return out


def _stability_section(score_run: str, m: dict[str, Any], topk) -> str:
    out_root = storage.parent(storage.parent(score_run))
    prev = workspace.newest(
        storage.join(out_root, schema.RUNS_DIR), prefix="dt=", before=workspace.date_dir(m["date"])
    )
    if prev is None:
        return _section("Stability", "<p>no earlier published date to compare with.</p>")
    old = storage.read_parquet(workspace.table_url(prev, schema.TOPK), columns=["user_id", "item_ids"])
    before = dict(zip(old.column("user_id").to_pylist(), old.column("item_ids").to_pylist(), strict=True))
    overlaps = []
    for user, items in zip(
        topk.column("user_id").to_pylist(), topk.column("item_ids").to_pylist(), strict=True
    ):
        if user in before and items:
            overlaps.append(len(set(items) & set(before[user])) / len(items))
    if not overlaps:
        return _section("Stability", f"<p>no user in common with {html.escape(prev)}.</p>")
    o = np.asarray(overlaps)
    counts, _ = np.histogram(o, bins=10, range=(0, 1))
    text = (
        f"<p>against {html.escape(prev)}: {len(o):,} users in both; median overlap@{m['k']} {np.median(o):.2f}; "
        f"<b>{int((o == 0).sum()):,}</b> users ({(o == 0).mean():.1%}) whose list changed completely.</p>"
    )
    chart = bar_chart(
        [f"≤{(i + 1) / 10:.1f}" for i in range(10)],
        counts / counts.sum(),
        f"overlap@{m['k']}",
        "share of users",
    )
    return _section("Stability against the previous date", text + chart)


def _index_section(meta: dict[str, Any]) -> str:
    keys = ("factory", "metric", "n", "d", "search_params", "tuned_recall@10", "tuned_on", "build_time_s")
    rows = [[k, _num(meta[k])] for k in keys if k in meta]
    note = "<p><small>query throughput: <code>batchrec index eval</code> measures recall@k and QPS against exact search.</small></p>"
    return _section("FAISS index", _table(["", ""], rows) + note)


def _popularity(data_url: str, recommended, n_items: int) -> tuple[tuple[float, float], list[float]]:
    """Share of the recommendations to the top 1 % / 10 % most popular items (by training events),
    and the share in each popularity decile."""
    from batchrec.dataset import PreparedDataset

    ds = PreparedDataset.open(data_url)
    counts = np.bincount(ds.train_items(), minlength=ds.n_items + 1)[1:]
    order = np.argsort(-counts, kind="stable")
    percentile = np.empty(len(order))
    percentile[order] = np.arange(len(order)) / max(len(order), 1)
    rec = ds.item_map.to_internal(recommended, strict=False)
    pct = percentile[rec[rec > 0] - 1]
    if not len(pct):
        return (0.0, 0.0), [0.0] * 10
    deciles = np.bincount(np.minimum((pct * 10).astype(int), 9), minlength=10) / len(pct)
    return ((pct < 0.01).mean(), (pct < 0.10).mean()), deciles.tolist()


def _sample(table, n: int):
    if table.num_rows <= n:
        return table
    return table.take(np.sort(np.random.default_rng(0).choice(table.num_rows, n, replace=False)))


# ---------------------------------------------------------------------------------------------
# HTML and SVG.


def line_chart(
    series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, mark_x: float | None = None
) -> str:
    """An inline SVG line chart of one or more series."""
    w, h, pad = 440, 260, 46
    xs = [x for xv, _ in series.values() for x in xv]
    ys = [y for _, yv in series.values() for y in yv if y == y]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 if max(ys) > 0 else 1.0

    def px(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 1.5 * pad)

    def py(y: float) -> float:
        return h - pad + (y - y0) / (y1 - y0) * -(h - 1.6 * pad)

    parts = [_axes(w, h, pad, xlabel, ylabel, (x0, x1), (y0, y1), px, py)]
    if mark_x is not None:
        parts.append(
            f'<line x1="{px(mark_x):.1f}" x2="{px(mark_x):.1f}" y1="{0.6 * pad}" y2="{h - pad}" class="mark"/>'
        )
    for i, (name, (xv, yv)) in enumerate(series.items()):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xv, yv, strict=True) if y == y)
        color = COLORS[i % len(COLORS)]
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(
            f'<text x="{pad + 8}" y="{0.6 * pad + 14 * i + 4}" fill="{color}">{html.escape(name)}</text>'
        )
    return f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">{"".join(parts)}</svg>'


def bar_chart(labels: list[str], values: list[float], xlabel: str, ylabel: str) -> str:
    """An inline SVG bar chart (values are shares or counts)."""
    w, h, pad = 440, 260, 46
    top = max(max(values, default=0), 1e-12) * 1.1
    bw = (w - 1.5 * pad) / max(len(values), 1)

    def py(y: float) -> float:
        return h - pad - y / top * (h - 1.6 * pad)

    parts = [_axes(w, h, pad, xlabel, ylabel, None, (0, top), None, py)]
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x = pad + i * bw
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{py(v):.1f}" width="{bw - 2:.1f}" height="{h - pad - py(v):.1f}" fill="{COLORS[0]}"><title>{html.escape(label)}: {v:.3g}</title></rect>'
        )
        if len(values) <= 10 or i % max(1, len(values) // 5) == 0:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{h - pad + 14}" text-anchor="middle" class="tick">{html.escape(label)}</text>'
            )
    return f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img">{"".join(parts)}</svg>'


def _axes(w, h, pad, xlabel, ylabel, xr, yr, px, py) -> str:
    parts = [
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad / 2}" y2="{h - pad}" class="axis"/>',
        f'<line x1="{pad}" y1="{0.6 * pad}" x2="{pad}" y2="{h - pad}" class="axis"/>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="12" y="{h / 2}" transform="rotate(-90 12 {h / 2})" text-anchor="middle">{html.escape(ylabel)}</text>',
    ]
    for t in np.linspace(yr[0], yr[1], 5):
        parts.append(f'<text x="{pad - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{t:.3g}</text>')
    if xr is not None:
        for t in np.linspace(xr[0], xr[1], 6):
            parts.append(
                f'<text x="{px(t):.1f}" y="{h - pad + 14}" text-anchor="middle" class="tick">{t:.3g}</text>'
            )
    return "".join(parts)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _row(*charts: str) -> str:
    return f'<div class="row">{"".join(charts)}</div>'


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _page(title: str, sections: list[str]) -> str:
    css = (
        "body{font:14px system-ui,sans-serif;margin:24px auto;max-width:960px;color:#222}"
        "h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}"
        ".row{display:flex;flex-wrap:wrap;gap:12px}svg{background:#fafafa;border:1px solid #eee}"
        "svg text{font-size:11px;fill:#333}.tick{fill:#666}.axis{stroke:#888}"
        ".mark{stroke:#555;stroke-dasharray:4 3}small{color:#666}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{css}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
        f"<p><small>batchrec · {schema.created_at()}</small></p></body></html>"
    )
