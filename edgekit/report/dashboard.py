"""`edgekit dashboard`: one static, self-contained HTML page from the results store.

The page works offline and from file://: plotly.js is inlined from the `plotly` Python package
(no CDN), the data is embedded as JSON, and the page script (dashboard.js beside this file) builds
the table and charts. Every string from a result file reaches the page only as JSON data inside a
non-executable <script type="application/json"> block (with <, > and & escaped), and the page
script writes it with textContent or escapes it before it reaches a chart label; nothing from a
result is ever parsed as HTML.
"""

import datetime
import html
import json
import os
from typing import Any, Dict, List, Optional

from .. import __version__
from ..artifacts import write_text_atomic
from ..errors import EdgekitError
from .store import METRICS, SERIES, build_index, measurement_rows, regressions, worse_text

HERE = os.path.dirname(os.path.abspath(__file__))


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise EdgekitError("the dashboard needs plotly: pip install 'edgekit[host]' (or plotly==7.1.0)") from None
    return get_plotlyjs()


def _script_json(data: Any) -> str:
    """JSON safe inside <script>: no '</script>', no '<!--', no HTML parsing surprises."""
    text = json.dumps(data, sort_keys=True, allow_nan=False, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _clean(value: Any) -> Any:
    """NaN/inf are not JSON: they become null (a chart gap), never a broken page."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def page_data(results_root: str, threshold: float = 0.10, index_path: Optional[str] = None) -> Dict[str, Any]:
    """Everything the page shows, as plain data (also what the tests check without a browser)."""
    index = build_index(results_root, index_path)
    runs = index["runs"]
    details = index["results"]
    for run in runs:
        result = details[run["run_id"]]
        run["environment"] = json.loads(run["environment"])
        run["rows"] = [{k: v for k, v in row.items() if k not in ("run_id", "model", "runner")}
                       for row in measurement_rows(result)]
        run["accuracy"] = result.get("accuracy")
        run["power_unavailable"] = "; ".join(result.get("power_unavailable_reasons") or [])
        run["series"] = " / ".join(str(run.get(k) or "-") for k in SERIES)
        run["inputs"] = ", ".join(str(i) for i in (result.get("model") or {}).get("inputs") or []) or None
    flagged = regressions(runs, threshold)
    return _clean({
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "edgekit": __version__, "results_root": os.path.abspath(results_root), "index": index["path"],
        "threshold": threshold, "metrics": [{"key": k, "better": d, "label": label} for k, d, label in METRICS],
        "series_keys": list(SERIES), "runs": runs, "problems": index["problems"], "regressions": flagged,
        "failures": index["failures"],
    })


def render(data: Dict[str, Any]) -> str:
    with open(os.path.join(HERE, "dashboard.html"), encoding="utf-8") as f:
        template = f.read()
    with open(os.path.join(HERE, "dashboard.js"), encoding="utf-8") as f:
        script = f.read()
    with open(os.path.join(HERE, "dashboard.css"), encoding="utf-8") as f:
        style = f.read()
    # Placeholders are replaced last-to-first so nothing inserted is itself searched for a placeholder.
    page = template.replace("{{style}}", style)
    page = page.replace("{{title}}", html.escape("edgekit benchmarks ({} runs)".format(len(data["runs"]))))
    parts = page.split("{{data}}")
    if len(parts) != 2:
        raise EdgekitError("dashboard template must hold {{data}} once")
    before, after = parts
    before = before.replace("{{plotly}}", _plotly_js().replace("</script", "<\\/script"))
    return before + _script_json(data) + after.replace("{{script}}", script)


def write_dashboard(results_root: str, out_path: str, threshold: float = 0.10,
                    index_path: Optional[str] = None) -> Dict[str, Any]:
    """Index the results, write the page atomically; return {path, runs, problems, regressions}."""
    data = page_data(results_root, threshold, index_path)
    write_text_atomic(out_path, render(data))
    return {"path": out_path, "runs": len(data["runs"]), "problems": data["problems"], "failures": data["failures"],
            "regressions": data["regressions"], "index": data["index"]}


def _number(value: Any) -> str:
    return "{:.4g}".format(value) if isinstance(value, float) else str(value)


def describe(summary: Dict[str, Any]) -> List[str]:
    lines = ["dashboard: {} runs -> {} (index {})".format(summary["runs"], summary["path"], summary["index"])]
    for problem in summary["problems"]:
        lines.append("skipped {}: {}".format(problem["file"], problem["reason"]))
    for failure in summary.get("failures", []):
        lines.append("failed: {} {}.{}.{} at {}: {}".format(failure["target"], failure["variant"], failure["precision"],
                                                          failure["placement"], failure["stage"], failure["message"]))
    for f in summary["regressions"]:
        if f["metric"] == "top1_vs_host":
            lines.append("accuracy: run {} scored {}% on the eval images, {:.2f} points below the host's {}% for "
                         "the same model and images".format(f["run_id"], f["after"], f["change"] * 100, f["before"]))
            continue
        lines.append("regression: run {} {} {} -> {} ({} than run {})".format(
            f["run_id"], f["label"], _number(f["before"]), _number(f["after"]), worse_text(f), f["previous"]))
    return lines
