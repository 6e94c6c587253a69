"""Compare two metrics.json files (for CI snapshots): what changed, and whether a chosen metric regressed.

A metrics.json of several generators (`[[generators]]`) holds one such document per generator: `--generator
NAME` compares that one; two such files are compared generator by generator (paths prefixed `<generator>:`).

Every value is addressed by a path `<feature space>/<variant>/overall/<metric>` or
`<feature space>/<variant>/per_class/<class>/<metric>` (and `<feature space>/reference/<metric>`).
A selector is either a bare metric name, which picks that metric in the `overall` scope of every
feature space and variant (`precision`), or a glob over paths (`midblock*/per_class/*/coverage`).

Direction (`Metric.higher_is_better` in metric_defs.py): for `fd` lower is better; for every other metric
higher is better. A selected value
regressed when it moved in the worse direction by more than the threshold (absolute), or when it
disappeared or became undefined (null) in B. Moves in the better direction are reported, never fail.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from .errors import UserError
from .integrity import check_result
from .metric_defs import METRICS
from .metrics import SCHEMA, generator_documents

LOWER_IS_BETTER = frozenset(k for k, m in METRICS.items() if not m.higher_is_better)
# The overall entries of every variant: precision, recall, density, coverage, fd, class_fidelity, centroid_accuracy.
DEFAULT_METRICS = tuple(k for k, m in METRICS.items() if m.scope == "overall")


def read_metrics(path) -> dict:
    path = Path(path)
    check_result(path, "measure")   # a work directory's metrics.json: as measure wrote it
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    generators = doc.get("generators") if isinstance(doc, dict) else None
    ok = isinstance(doc, dict) and doc.get("schema") == SCHEMA and (
        isinstance(doc.get("feature_spaces"), dict) if generators is None else
        isinstance(generators, dict) and generators and
        all(isinstance(g, dict) and isinstance(g.get("feature_spaces"), dict) for g in generators.values()))
    if not ok:
        raise UserError(f"{path}: not a dmd2report metrics.json (expected schema {SCHEMA!r})")
    return doc


def _documents(doc: dict, path, generator: str | None, other_is_comparison: bool) -> dict[str, dict]:
    """{prefix: metrics document} compared from one file: a one-generator file whole (prefix ""); from a
    comparison, the generator `generator` names, its only one, or (against another comparison) every one,
    its paths prefixed `<generator>:`."""
    docs = generator_documents(doc)
    if "" in docs:
        return docs
    if generator is not None:
        if generator not in docs:
            raise UserError(f"{path}: --generator {generator}: no such generator (it holds {', '.join(docs)})")
        return {"": docs[generator]}
    if len(docs) == 1:
        return {"": next(iter(docs.values()))}
    if not other_is_comparison:
        raise UserError(f"{path}: holds several generators ({', '.join(docs)}); pick the one to compare with "
                        f"--generator NAME")
    return {f"{name}:": d for name, d in docs.items()}


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


PROVENANCE_ROWS = 12      # provenance differences listed; the rest are counted
VALUE_CHARS = 40          # a provenance value longer than this (a checksum, a path) is shortened in the middle


def _leaves(value, prefix: str) -> dict[str, object]:
    """{dotted key: value} of a provenance entry: nested tables flattened (`fit.class.mean`), so that a
    difference reads as the few values that differ, not as two whole dictionaries."""
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    return {prefix: value}


def _short(value) -> str:
    text = "-" if value is None else _fmt(value) if isinstance(value, float) else str(value)
    return text if len(text) <= VALUE_CHARS else f"{text[:VALUE_CHARS // 2 - 1]}...{text[-(VALUE_CHARS // 2 - 2):]}"


def _provenance_lines(a_docs: dict, b_docs: dict) -> list[str]:
    """The provenance values that differ between A and B, one aligned row each ("-": absent), at most
    PROVENANCE_ROWS of them and a count of the rest."""
    rows = []
    for prefix in sorted(a_docs.keys() | b_docs.keys()):
        pa, pb = ((docs.get(prefix) or {}).get("provenance") or {} for docs in (a_docs, b_docs))
        la = {k: v for key, value in pa.items() for k, v in _leaves(value, prefix + key).items()}
        lb = {k: v for key, value in pb.items() for k, v in _leaves(value, prefix + key).items()}
        rows += [(key, _short(la.get(key)), _short(lb.get(key))) for key in sorted(la.keys() | lb.keys())
                 if la.get(key) != lb.get(key)]
    if not rows:
        return []
    shown = rows[:PROVENANCE_ROWS]
    w = max(len(key) for key, _, _ in shown)
    lines = ["provenance that differs (A -> B):"] + [f"  {key:<{w}}  {va} -> {vb}" for key, va, vb in shown]
    if len(rows) > len(shown):
        lines.append(f"  ... and {len(rows) - len(shown)} more (the files' \"provenance\" tables)")
    return lines


def compare_metrics(a_path, b_path, metrics: list[str] | None = None, threshold: float = 0.0,
                    generator: str | None = None):
    """(report lines, regressed) for B against A. `metrics` are selectors (see the module docstring);
    None selects the overall entries of DEFAULT_METRICS. Values outside the selection are reported
    when they changed but never count as regressions. Either file may hold several generators (a
    comparison's metrics.json): `generator` picks one of each such file; two comparisons without it are
    compared generator by generator, paths prefixed `<generator>:`."""
    if threshold < 0:
        raise UserError(f"--threshold {threshold}: must be >= 0")
    a_raw, b_raw = read_metrics(a_path), read_metrics(b_path)
    a_docs = _documents(a_raw, a_path, generator, "generators" in b_raw)
    b_docs = _documents(b_raw, b_path, generator, "generators" in a_raw)
    a = {prefix + p: e for prefix, d in a_docs.items() for p, e in flatten(d).items()}
    b = {prefix + p: e for prefix, d in b_docs.items() for p, e in flatten(d).items()}
    selectors = list(metrics) if metrics else list(DEFAULT_METRICS)
    if metrics:
        for sel in selectors:
            if not any(_selected(p, *e[:2], [sel]) for p, e in (a | b).items()):
                raise UserError(f"--metric {sel}: matches no value in {a_path} or {b_path}")
    regressed = False
    rows: list[tuple[str, str, str]] = []   # (tag, path, values): one aligned line each
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
            rows.append(("REGRESSED" if chosen else "removed", path, f"only in A ({_fmt(ea.get('value'))})"))
            continue
        if ea is None:
            rows.append(("added", path, _fmt(eb.get("value"))))
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
            rows.append(("REGRESSED" if bad else "changed", path, f"{_fmt(va)} -> {_fmt(vb)}{suffix}"))
            continue
        delta = vb - va
        worse = delta > threshold if metric in LOWER_IS_BETTER else -delta > threshold
        bad = chosen and worse
        regressed |= bad
        rows.append(("REGRESSED" if bad else "changed", path, f"{_fmt(va)} -> {_fmt(vb)} ({delta:+.6g}){suffix}"))
    lines = _provenance_lines(a_docs, b_docs)
    if rows:
        # A table: the tag right-aligned, the values in one column after the paths.
        w = max(len(path) for _, path, _ in rows) + 1
        lines += [f"{tag:>9} {path + ':':<{w}} {values}" for tag, path, values in rows]
    if unselected_class_changes:
        lines.append(f"  {unselected_class_changes} per-class values changed (not selected; list them with a "
                     f"glob such as '*/per_class/*/coverage')")
    direction = "fd: lower is better; others: higher is better"
    lines.append(f"{'regression' if regressed else 'no regression'}: selection {', '.join(selectors)}; "
                 f"threshold {threshold:g} (absolute; {direction})")
    return lines, regressed
