"""The table of current figures at the top of benchmarks/README.md, written from the files in benchmarks/results/.

Each kept result is declared once in RESULTS_TABLE: its benchmark (the README section that says what it
measures), the device it ran on, the command that writes it, its files (the first is read, the others are its log
or plot), and how its headline figures are read from that file. `python benchmarks/summary.py` rewrites the table
between the README's markers; `--check` exits 1 when the README's table is not what it would write.
tests/test_benchmark_summary.py runs the same comparison and fails on a file in results/ that no row names: only
the latest result per benchmark and device is kept (git history holds the earlier ones, HISTORY.md their figures).

    python benchmarks/summary.py            # rewrite the table in benchmarks/README.md
    python benchmarks/summary.py --check    # exit 1 if it is stale
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN = "<!-- current figures: written by `python benchmarks/summary.py` from results/; do not edit by hand -->"
END = "<!-- end of current figures -->"


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _s(x: float) -> str:
    return f"{x:,.1f} s"


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


# Readers: one per kind of result file, each returning the row's figures as one line of text.

def throughput(path: Path) -> str:
    d = _json(path)
    rows, model = d["rows"], d["model_only_img_s"]
    gen = [rows[f"optimised gen {m}"] for m in ("class", "uniform", "zero", "blend")]
    ext = rows["optimised extract, no subsets"]
    return (f"extraction {_n(ext['img_s'])} img/s ({ext['vs_fp32']:.1f}x float32 eager); generation "
            f"{_n(min(r['img_s'] for r in gen))}-{_n(max(r['img_s'] for r in gen))} img/s in 4 conditioning modes "
            f"({min(r['vs_seed'] for r in gen):.0f}-{max(r['vs_seed'] for r in gen):.0f}x seed-style); model only "
            f"(compiled) {_n(model['extract: bf16 compiled'])} img/s extraction, "
            f"{_n(model['generate: bf16 compiled'])} generation; image error {100 * d['rel_err_image']:.2f}% of "
            f"float32; peak GPU memory "
            f"{max(r['peak_gib'] for r in rows.values()):.1f} GiB")


def kernels(path: Path) -> str:
    d = _json(path)
    row = d["rows"]["generate: default"]
    conv = sum(k["share"] for k in row["kernels"] if "fprop_implicit_gemm" in k["kernel"])   # cuDNN's convolutions
    return (f"compiled generation, model only, batch {d['batch']}: {_n(float(row['img_s']))} img/s; cuDNN "
            f"convolutions {100 * conv:.0f}% of a profiled batch's kernel time (of the {len(row['kernels'])} "
            f"slowest kernels listed)")


def pytest_log(path: Path) -> str:
    last = path.read_text(encoding="utf-8").strip().splitlines()[-1]   # pytest's summary line
    return ", ".join(re.findall(r"\d+ (?:passed|failed|errors?|skipped)", last))


def knn_log(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    head = re.match(r"exact k-NN, (\d+) queries x (\d+) base x (\d+) dims, k=(\d+)", text)
    times = {}
    rows = re.findall(r"^(torch chunked|sklearn brute|numpy full)\s+(cpu|cuda)\s+([\d.]+) s", text, re.MULTILINE)
    for name, dev, t in rows:
        times.setdefault(f"{name} {dev}", t)   # the first torch cpu line is `knn`; the second `within_radius`
    return (f"{_n(int(head[1]))} x {_n(int(head[2]))} x {head[3]} dims, k = {head[4]}: "
            + ", ".join(f"{k} {t} s" for k, t in times.items()))


def knn_pairs(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    head = text.splitlines()[0].split(";")[0]
    rows = re.findall(r"^\s+(.+?)\s{2,}this code\s+([\d.]+) s\s+(\S+)\s+[\d.]+ s\s+([\d.]+)x\s+identical (\w+)",
                      text, re.MULTILINE)
    same = all(r[4] == "True" for r in rows)
    return (f"{head}: " + ", ".join(f"{label.split(',')[0]} {t} s ({ratio}x {ref})" for label, t, ref, ratio, _ in rows)
            + ("; identical results" if same else "; results differ"))


def knn_shapes(path: Path) -> str:
    rows = re.findall(r"^\s+(generated x real pass|real among itself)\s{2,}(.+?)\s{2,}([\d.]+) s$",
                      path.read_text(encoding="utf-8"), re.MULTILINE)
    parts = []
    for what in dict.fromkeys(r[0] for r in rows):
        times = sorted((float(t), shape) for w, shape, t in rows if w == what)
        parts.append(f"{what}: fastest {times[0][1]} ({times[0][0]:.2f} s; slowest {times[-1][0]:.2f} s)")
    return "; ".join(parts)


def profile_log(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    cuda = re.search(r"Self CUDA time total: ([\d.]+)s", text)[1]
    return f"{text.splitlines()[0]}; {float(cuda):.2f} s of CUDA kernel time"


STAGES = ("fit", "measure", "atlas", "trajectory", "render")   # the stages after generation, in order


def _generated(size: dict) -> str:
    return f"{_n(size['n_gen_class'])} + 3 x {_n(size['n_variant'])}"


def scale(path: Path) -> str:
    d, lines = _json(path), []
    for size in d["sizes"]:
        rows = [r for r in size["stages"] if r["code"] == "current"]
        head = f"{_n(size['n_real'])} real + {_generated(size)}: "
        if d.get("one_process"):
            (r,) = rows
            lines.append(head + ", ".join(f"{k} {_s(r['stages_s'][k])}" for k in STAGES if k in r["stages_s"])
                         + f"; stage time {_s(r['stage_s'])}, one `dmd2report build` {_s(r['wall_s'])}, "
                         f"peak RSS {r['peak_rss_gib']:.2f} GiB")
        else:
            rows.sort(key=lambda r: STAGES.index(r["stage"]))
            lines.append(head + ", ".join(f"{r['stage']} {_s(r['stage_s'])}" for r in rows)
                         + f"; stage time {_s(sum(r['stage_s'] for r in rows))}, as processes "
                         f"{_s(sum(r['wall_s'] for r in rows))}; peak RSS at most "
                         f"{max(r['peak_rss_gib'] for r in rows):.2f} GiB")
    return "<br>".join(lines)


def e2e(path: Path) -> str:
    last = _json(path)[-1]   # one record per device call; the last has every stage
    st = {k: v["seconds"] for k, v in last["stages"].items()}
    after = sum(st[s] for s in STAGES)
    return (f"{_n(last['n_real'])} real + {_n(last['n_generated'])} generated: extract {_s(st['extract'])}; "
            + ", ".join(f"{s} {_s(st[s])}" for s in STAGES)
            + f" ({_s(after)} after generation); site {last['site_bytes'] / 1e6:.1f} MB")


def scaling(path: Path) -> str:
    def equal(stores: dict) -> bool:   # every store's metadata, thumbnails and features as the 1-process ones
        return all(v for checks in stores.values() for k, v in checks.items() if not k.startswith("max_"))
    return "; ".join(f"{n} GPU: extraction {_n(r['extract_img_s'])} img/s, generation {_n(r['generate_img_s'])} "
                     f"img/s, stores equal: {equal(r['stores'])}" for n, r in _json(path).items())


def fingerprint(path: Path) -> str:
    d = _json(path)
    return (f"{_n(d['n_files'])} files, scaled to {_n(d['scaled_to'])} (CPU seconds): no-change content key "
            f"{_s(d['no_change_listing_reused_1280k_s'])} (keys alone before: {d['baseline_keys_s']:.3f} s; "
            f"the source's listing, not redone, {_s(d['listing_1280k_s'])}); first look {_s(d['first_look_1280k_s'])}; results "
            f"checked by stat {d['results_by_stat_per_file_us']:.0f} us a file; BLAKE2b {d['hash_gib_s']:.2f} GiB/s "
            f"(10 GiB of stores hashed by verify: {_s(d['verify_full_10gib_s'])})")


def measure(path: Path) -> str:
    d = _json(path)
    return (f"{_n(d['n_real'])} real + {_n(d['n_gen_class'])} + 3 x {_n(d['n_variant'])}: {_s(d['new_s'])} against "
            f"{_s(d['old_s'])} before (f2c731b), {d['ratio_old_over_new']:.1f}x; peak RSS "
            f"{d['new_peak_rss_gib']:.2f} GiB; same metrics: {d['same_metrics']}")


def fit_overlap(path: Path) -> str:
    d = _json(path)
    return (f"{_n(d['n'])} rows, whole fit: " + ", ".join(f"{r['schedule']} {r['total']:.2f} s" for r in d["rows"]))


def fit_projection(path: Path) -> str:
    r = _json(path)["synthetic gen-class"]
    fast = r["fast100"]
    return (f"{_n(r['n'])} points onto a {_n(r['n_umap_fit'])}-point map: fast {_s(fast['seconds'])} against "
            f"umap-learn's transform {_s(r['seconds_umap'])}, trust {fast['trust']:.3f} / {r['trust_umap']:.3f}, "
            f"median displacement {100 * fast['median_displacement_share']:.3f}% of the map")


def umap_modes(path: Path) -> str:
    d = _json(path)
    rows = [f"{r['init']}{'' if r['reproducible'] else ' unseeded'}"
            f"{' seed ' + str(r['seed']) if r.get('seed') is not None else ''} {_s(r['seconds'])} "
            f"(trust {r['trustworthiness']:.3f})" for r in d["results"]]
    return f"{_n(d['n'])} points, {d['cores']} cores: " + ", ".join(rows)


def report_frames(path: Path) -> str:
    d = _json(path)
    demo = d["demo"]

    def figures(r: dict) -> str:
        x = r.get("vs_demo")
        ratio = (lambda k: f" ({x[k]:.2f}x)") if x else (lambda k: "")
        return (f"first render {_n(r['first_render_ms'])} ms{ratio('first_render_ms')}, pan/zoom frame median "
                f"{_n(r['after_median_ms'])} ms{ratio('after_median_ms')}, p95 {_n(r['after_p95_ms'])} ms{ratio('after_p95_ms')}, "
                f"input to paint median {_n(r['input_paint_median_ms'])} ms{ratio('input_paint_median_ms')}, "
                f"p95 {_n(r['input_paint_p95_ms'])} ms{ratio('input_paint_p95_ms')}")
    lines = [f"demo-size site ({_n(demo['n'])} points): {figures(demo)}"]
    lines += [f"{_n(r['n'])} points ({_n(r['max_points'])} drawn, tiles {r['tiles_mb']:.1f} MB in {_n(r['n_tiles'])} files, "
              f"{r['tiles_loaded']} loaded zoomed in): {figures(r)}" for r in d["sites"]]
    return "<br>".join(lines)


def encoders(path: Path) -> str:
    d = _json(path)
    inc, dino = d["inception"], d["dinov2_vitl14"]
    tuned = {k.removeprefix("bfloat16_compiled_"): v["img_s"] for k, v in dino.items()
             if k.startswith("bfloat16_compiled_") and isinstance(v, dict)}
    return (f"Inception float32 {_n(inc['ours_img_s'])} img/s, {inc['ratio_to_loop']:.2f}x pytorch-fid's loop "
            f"({_n(inc['pytorch_fid_loop_img_s'])}), {inc['ratio_to_model']:.2f}x its model alone, "
            f"{_n(inc['ours_strict_fp32_img_s'])} with TF32 off; DINOv2 ViT-L/14 bfloat16 {_n(dino['bfloat16_img_s'])} "
            f"img/s eager, {_n(dino['bfloat16_compiled_img_s'])} compiled"
            + "".join(f", {_n(v)} {m}" for m, v in tuned.items())
            + f", float32 {_n(dino['float32_img_s'])}; FD bfloat16 {dino['fd_bfloat16']:.3f} against float32 "
              f"{dino['fd_float32']:.3f} (random weights)")


@dataclass(frozen=True)
class Result:
    benchmark: str                     # the README section (its title) that says what the benchmark measures
    device: str
    command: str                       # what writes the first file (from the repository root, PYTHONPATH=.)
    files: tuple[str, ...]             # under results/; the first is read, the others are its log or plot
    read: Callable[[Path], str]        # the headline figures, from the first file


H200, HOST, CPU2 = "1 H200 (16 CPU cores)", "the H200 machine's 16 CPU cores", "2 CPU cores"
H100 = "1 H100"
SUITE = "bash benchmarks/device_suite.sh"
KNN_KERNELS = "python benchmarks/knn.py --kernels c83c66e"

RESULTS_TABLE = (
    Result("GPU throughput", H200, f"{SUITE} throughput", ("throughput-h200.json", "throughput-h200.log"), throughput),
    Result("Where a compiled batch spends its time", H200, f"{SUITE} kernels",
           ("kernels-h200.json", "kernels-h200.log"), kernels),
    Result("GPU tests", H200, f"{SUITE} tests", ("gpu-tests-h200.log",), pytest_log),
    Result("k-NN", H200, "python benchmarks/knn.py", ("knn-h200.log",), knn_log),
    Result("CPU kernels and block shapes", CPU2, KNN_KERNELS, ("knn-kernels-cpu2.log",), knn_pairs),
    Result("CPU kernels and block shapes", HOST, KNN_KERNELS, ("knn-kernels-cpu16-h200.log",), knn_pairs),
    Result("CPU kernels and block shapes", CPU2, "python benchmarks/knn.py --shapes", ("knn-shapes-cpu2.log",),
           knn_shapes),
    Result("GPU searches", H200, f"{KNN_KERNELS} --kernels-device cuda --kernels-n 640000",
           ("knn-kernels-cuda-h200.log",), knn_pairs),
    Result("GPU searches", H200, "python benchmarks/knn.py --profile --kernels-device cuda --kernels-n 640000",
           ("knn-profile-cuda-h200.log",), profile_log),
    Result("Scale", CPU2, "python benchmarks/scale.py --n-real 50000 --n-gen 50000 --n-variant 10000",
           ("scale-cpu2-50k.json", "scale-cpu2-50k.png"), scale),
    Result("Scale", CPU2, "python benchmarks/scale.py --n-real 50000,256000 --n-gen 100000 --n-variant 50000 "
                          "--timeout 1500",
           ("scale-cpu2-sweep.json", "scale-cpu2-sweep.png"), scale),
    Result("Scale", H200, f"N_REAL=256000 {SUITE} scale", ("scale-h200-256k.json", "scale-h200-256k.png"), scale),
    Result("Scale", H200, f"N_REAL=1280000 {SUITE} scale", ("scale-h200-1280k.json", "scale-h200-1280k.png"), scale),
    Result("Scale", H200, f"ONE_PROCESS=1 N_REAL=256000 {SUITE} scale",
           ("scale-h200-256k-build.json", "scale-h200-256k-build.png"), scale),
    Result("Scale", H200, f"ONE_PROCESS=1 N_REAL=1280000 {SUITE} scale",
           ("scale-h200-1280k-build.json", "scale-h200-1280k-build.png"), scale),
    Result("End to end at ImageNet scale", H200, "python benchmarks/e2e.py --n 1281167 --root /tmp/e2e --timeout 535",
           ("e2e-h200-1280k.json",), e2e),
    Result("Scaling over several GPUs", H200, f"SCALING=1 {SUITE} scaling", ("scaling-h200-1gpu.json",), scaling),
    Result("Content-keyed cache", CPU2, "python benchmarks/fingerprint.py --n 50000",
           ("fingerprint-cpu2.json",), fingerprint),
    Result("Measure at scale", CPU2, "python benchmarks/measure.py --n-real 10000 --n-gen 10000 --n-variant 2000",
           ("measure-cpu2-10k.json",), measure),
    Result("UMAP modes", CPU2, "python benchmarks/umap_modes.py --n 50000", ("umap-modes-cpu2.json",), umap_modes),
    Result("UMAP modes", HOST, "python benchmarks/umap_modes.py --n 50000", ("umap-modes-h200.json",), umap_modes),
    Result("UMAP modes", f"{CPU2}, the demo's real set",
           "python benchmarks/umap_modes.py --store WORK/stores/real --seeds 2",
           ("umap-modes-demo.json",), umap_modes),
    Result("Fast projection", CPU2,
           "python benchmarks/fit_projection.py --demo WORK --synthetic SCALE_WORK --n-new 10000",
           ("fit-projection-cpu2.json",), fit_projection),
    Result("Report at any N", CPU2, "python benchmarks/report_scale.py --frames 60000,250000,1280000",
           ("report-scale-cpu2.json",), report_frames),
    Result("Fit overlap", H200, "python benchmarks/fit_overlap.py --n 640000",
           ("fit-overlap-h200.json", "fit-overlap-h200.log"), fit_overlap),
    Result("Standard feature spaces' encoders", H100,
           "python benchmarks/encoders.py --extra-compile-modes max-autotune-no-cudagraphs",
           ("encoders-h100.json",), encoders),
)


def anchor(title: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def table() -> str:
    lines = [BEGIN, "", "| benchmark | device | figures | command | result |", "|---|---|---|---|---|"]
    for r in RESULTS_TABLE:
        files = ", ".join(f"[`{f}`](results/{f})" for f in r.files)
        lines.append(f"| [{r.benchmark}](#{anchor(r.benchmark)}) | {r.device} | {r.read(RESULTS / r.files[0])} | "
                     f"`{r.command}` | {files} |")
    return "\n".join(lines + ["", END])


def current(readme: str) -> str:
    start, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[start:end]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's table is not what this writes")
    args = ap.parse_args(argv)
    readme, new = README.read_text(encoding="utf-8"), table()
    if args.check:
        stale = current(readme) != new
        print("benchmarks/README.md's table is stale: python benchmarks/summary.py" if stale else "up to date")
        return int(stale)
    README.write_text(readme.replace(current(readme), new), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
