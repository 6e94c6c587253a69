"""Compare two metrics.json files (for CI snapshots): what changed, and whether a chosen metric regressed.

Every value is addressed by a path `<feature space>/<variant>/overall/<metric>` or
`<feature space>/<variant>/per_class/<class>/<metric>` (and `<feature space>/reference/<metric>`).
A selector is either a bare metric name, which picks that metric in the `overall` scope of every
feature space and variant (`precision`), or a glob over paths (`midblock*/per_class/*/coverage`).

Direction (`Metric.higher_is_better` in metrics.py): for `fd` lower is better; for every other metric
higher is better. A selected value
regressed when it moved in the worse direction by more than the threshold (absolute), or when it
disappeared or became undefined (null) in B. Moves in the better direction are reported, never fail.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from .errors import UserError
from .metric_defs import METRICS
from .metrics import SCHEMA

LOWER_IS_BETTER = frozenset(k for k, m in METRICS.items() if not m.higher_is_better)
# The overall entries of every variant: precision, recall, density, coverage, fd, class_fidelity, centroid_accuracy.
DEFAULT_METRICS = tuple(k for k, m in METRICS.items() if m.scope == "overall")


def read_metrics(path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("feature_spaces"), dict):
        raise UserError(f"{path}: not a dmd2report metrics.json (expected schema {SCHEMA!r})")
    return doc


def flatten(doc: dict) -> dict[str, tuple[str, str, dict]]:
    """{path: (scope, metric, entry)} for every metric entry of a metrics.json document;
    scope is "reference", "overall" or "per_class" (feature space names may contain '/')."""
    out = {}
    for space, s in doc["feature_spaces"].items():
        for metric, e in (s.get("reference") or {}).items():
            out[f"{space}/reference/{metric}"] = ("reference", metric, e)
        for variant, v in (s.get("variants") or {}).items():
            for metric, e in (v.get("overall") or {}).items():
                out[f"{space}/{variant}/overall/{metric}"] = ("overall", metric, e)
            for cls, scope in (v.get("per_class") or {}).items():
                for metric, e in scope.items():
                    out[f"{space}/{variant}/per_class/{cls}/{metric}"] = ("per_class", metric, e)
    return out


def _selected(path: str, scope: str, metric: str, selectors) -> bool:
    for sel in selectors:
        if "/" in sel or any(ch in sel for ch in "*?["):
            if fnmatch.fnmatchcase(path, sel):
                return True
        elif scope == "overall" and metric == sel:
            return True
    return False


def _fmt(v) -> str:
    return "null" if v is None else f"{v:.6g}"


def compare_metrics(a_path, b_path, metrics: list[str] | None = None, threshold: float = 0.0):
    """(report lines, regressed) for B against A. `metrics` are selectors (see the module docstring);
    None selects the overall entries of DEFAULT_METRICS. Values outside the selection are reported
    when they changed but never count as regressions."""
    if threshold < 0:
        raise UserError(f"--threshold {threshold}: must be >= 0")
    a_doc, b_doc = read_metrics(a_path), read_metrics(b_path)
    a, b = flatten(a_doc), flatten(b_doc)
    selectors = list(metrics) if metrics else list(DEFAULT_METRICS)
    if metrics:
        for sel in selectors:
            if not any(_selected(p, *e[:2], [sel]) for p, e in (a | b).items()):
                raise UserError(f"--metric {sel}: matches no value in {a_path} or {b_path}")
    lines, regressed = [], False
    if a_doc.get("provenance") != b_doc.get("provenance"):
        for key in sorted(set(a_doc.get("provenance") or {}) | set(b_doc.get("provenance") or {})):
            va, vb = (a_doc.get("provenance") or {}).get(key), (b_doc.get("provenance") or {}).get(key)
            if va != vb:
                lines.append(f"  provenance {key}: {va} -> {vb}")
    unselected_class_changes = 0
    for path in sorted(a.keys() | b.keys()):
        scope, metric, _ = a.get(path) or b.get(path)
        chosen = _selected(path, scope, metric, selectors)
        ea, eb = (a.get(path) or (None, None, None))[2], (b.get(path) or (None, None, None))[2]
        if not chosen and scope == "per_class":
            # thousands of per-class values: counted, listed only when selected
            unselected_class_changes += ea is None or eb is None or any(ea.get(key) != eb.get(key) for key in
                                                                     ("value", "n_real", "n_generated", "k"))
            continue
        if eb is None:
            regressed |= chosen
            lines.append(f"{'REGRESSED' if chosen else '  removed'} {path}: only in A ({_fmt(ea.get('value'))})")
            continue
        if ea is None:
            lines.append(f"  added {path}: {_fmt(eb.get('value'))}")
            continue
        va, vb = ea.get("value"), eb.get("value")
        counts = [f"{key} {ea.get(key)} -> {eb.get(key)}" for key in ("n_real", "n_generated", "k")
                  if ea.get(key) != eb.get(key)]
        if va == vb and not counts:
            continue
        suffix = f" ({', '.join(counts)})" if counts else ""
        if va is None or vb is None:
            bad = chosen and vb is None
            regressed |= bad
            lines.append(f"{'REGRESSED' if bad else '  changed'} {path}: {_fmt(va)} -> {_fmt(vb)}{suffix}")
            continue
        delta = vb - va
        worse = delta > threshold if metric in LOWER_IS_BETTER else -delta > threshold
        bad = chosen and worse
        regressed |= bad
        tag = "REGRESSED" if bad else "  changed"
        lines.append(f"{tag} {path}: {_fmt(va)} -> {_fmt(vb)} ({delta:+.6g}){suffix}")
    if unselected_class_changes:
        lines.append(f"  {unselected_class_changes} per-class values changed (not selected; list them with a "
                     f"glob such as '*/per_class/*/coverage')")
    direction = "fd: lower is better; others: higher is better"
    lines.append(f"{'regression' if regressed else 'no regression'}: selection {', '.join(selectors)}; "
                 f"threshold {threshold:g} (absolute; {direction})")
    return lines, regressed
