"""A small mutation check of the modules that hold the README's promises (issue 36).

Each mutation is one line of the library changed so that a promised behaviour breaks (file, the
original snippet, what it becomes, the tests that cover it). For each, the tree (exporter/,
resexport/, tests/, pyproject.toml) is copied to a temporary folder, the one mutation applied to the
copy, and the covering tests run there with `pytest -x -q` (the copy first on PYTHONPATH, the copy as
the working directory, so subprocesses see the mutant too). The worktree itself is never changed.
A mutant is *killed* when the tests fail (pytest exit 1), *survived* when they pass, *error* when
pytest could not run them (collection error, timeout). Before the mutants, each
distinct set of covering tests is run once unmutated: it must pass, or its mutants prove nothing.

    python tests/mutation.py                 # every mutation below
    python tests/mutation.py auto holdout    # those whose id contains one of the words
    python tests/mutation.py --list

Writes benchmarks/results/mutation.json and .md (with --out DIR, there instead). Not run in CI:
one mutant costs one pytest process (seconds for the fast guards, minutes where a model converts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ("exporter", "resexport", "tests", "pyproject.toml")
GUARDS = "tests/test_promise_guards.py"
API_TEST = "tests/test_model_conventions.py::test_the_python_api_trains_converts_a_run_and_reads_its_results"


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    original: str
    mutated: str
    tests: tuple[str, ...]
    promise: str


M = Mutation
MUTATIONS: list[Mutation] = [
    # --int8 auto: the ladder (exporter/quantize/make.py)
    M("auto-stop-first-pass", "exporter/quantize/make.py",
      'if verdict["passed"]:\n                    self._place(path, out, kind)',
      'if not verdict["passed"]:\n                    self._place(path, out, kind)',
      (f"{GUARDS}::test_auto_stops_at_ptq_when_it_passes",),
      "auto stops at the first remedy that passes on the hold-out"),
    M("auto-one-base-only", "exporter/quantize/make.py",
      "for base in bases:  # the better base first",
      "for base in bases[:1]:  # the better base first",
      (f"{GUARDS}::test_auto_falls_back_on_the_closer_base_then_the_other_when_all_float_misses",),
      "auto moves to the other base when even all-float misses"),
    M("auto-stop-after-failed-base", "exporter/quantize/make.py",
      "error = exc\n                    continue",
      "error = exc\n                    break",
      (f"{GUARDS}::test_auto_falls_back_on_the_closer_base_then_the_other_when_all_float_misses",),
      "auto moves to the other base when even all-float misses"),
    M("auto-worse-base-first", "exporter/quantize/make.py",
      "for d, _, step in tried),\n                                                 reverse=True)",
      "for d, _, step in tried),\n                                                 reverse=False)",
      (f"{GUARDS}::test_auto_falls_back_on_the_closer_base_then_the_other_when_all_float_misses",),
      "auto's fallback starts on the base that came closer"),
    # the hold-out's disjointness (exporter/quantize/diagnose.py, exporter/data/datasets.py)
    M("holdout-keeps-training-images", "exporter/quantize/diagnose.py",
      "exclude = np.union1d(calibration.indices, excluded_training_indices(run, dataset))",
      "exclude = calibration.indices",
      (f"{GUARDS}::test_the_int8_holdout_is_disjoint_from_calibration_and_the_training_images",),
      "the hold-out is disjoint from the model's training images"),
    M("holdout-keeps-calibration", "exporter/quantize/diagnose.py",
      "exclude = np.union1d(calibration.indices, excluded_training_indices(run, dataset))",
      "exclude = excluded_training_indices(run, dataset)",
      (f"{GUARDS}::test_the_int8_holdout_is_disjoint_from_calibration_and_the_training_images",),
      "the hold-out is disjoint from calibration"),
    M("holdout-training-subset-redrawn-otherwise", "exporter/quantize/diagnose.py",
      'idx = data_mod.stratified_indices(dataset.y_train, int(sub["count"]), seed=1)',
      'idx = data_mod.stratified_indices(dataset.y_train, int(sub["count"]), seed=0)',
      (f"{GUARDS}::test_the_int8_holdout_is_disjoint_from_calibration_and_the_training_images",),
      "the training subset is re-drawn as data.subset drew it"),
    M("holdout-set-ignores-exclude", "exporter/data/datasets.py",
      "keep = np.setdiff1d(np.arange(len(ds.y_train)), np.asarray(list(exclude), dtype=np.int64))",
      "keep = np.arange(len(ds.y_train))",
      (f"{GUARDS}::test_the_int8_holdout_is_disjoint_from_calibration_and_the_training_images",),
      "the hold-out slice excludes what it is told to"),
    # validate: "proves little" (exporter/validate.py)
    M("proves-little-near-ties", "exporter/validate.py",
      "if near_ties_percent > 50:",
      "if near_ties_percent > 100:",
      (f"{GUARDS}::test_each_proves_little_reason_alone",
       f"{GUARDS}::test_a_reference_unsure_on_most_images_proves_little_and_says_why"),
      "validate says so when the reference is unsure on most images"),
    M("proves-little-near-ties-wiring", "exporter/validate.py",
      'near_ties = compare(ref, ref, y, dataset.class_names, convention)["near_ties_percent"]',
      "near_ties = 0.0",
      (f"{GUARDS}::test_a_reference_unsure_on_most_images_proves_little_and_says_why",),
      "validate measures the reference's near-ties for the warning"),
    M("proves-little-one-class", "exporter/validate.py",
      "if counts[top] > n / 2:",
      "if counts[top] > n:",
      (f"{GUARDS}::test_each_proves_little_reason_alone",),
      "validate says so when the reference predicts one class for most images"),
    M("proves-little-chance", "exporter/validate.py",
      "if acc <= chance + 2:",
      "if acc <= chance:",
      (f"{GUARDS}::test_each_proves_little_reason_alone",),
      "validate says so when the reference scores near chance"),
    # batch invariance (exporter/checks.py)
    M("batch-singles-leg-dropped", "exporter/checks.py",
      '"passed": finite and max(d_single, d_shuffled) <= tolerance}',
      '"passed": finite and d_shuffled <= tolerance}',
      (f"{GUARDS}::test_batch_invariance_catches_an_artifact_that_differs_only_one_image_at_a_time",),
      "batch invariance: one image at a time"),
    M("batch-shuffled-leg-dropped", "exporter/checks.py",
      '"passed": finite and max(d_single, d_shuffled) <= tolerance}',
      '"passed": finite and d_single <= tolerance}',
      (f"{GUARDS}::test_batch_invariance_catches_an_artifact_that_differs_only_when_the_batch_is_shuffled",),
      "batch invariance: the shuffled batch"),
    M("batch-not-shuffled", "exporter/checks.py",
      "shuffled[perm] = as_p(runner.predict_batched(x[perm], batch))",
      "shuffled[perm] = as_p(runner.predict_batched(x, batch))[perm]",
      (f"{GUARDS}::test_batch_invariance_catches_an_artifact_that_differs_only_when_the_batch_is_shuffled",),
      "batch invariance: the batch really is shuffled"),
    M("batch-gate-ignored-by-validate", "exporter/validate.py",
      "if batch is not None and not batch[\"passed\"]:",
      "if batch is not None and batch is None:",
      (f"{GUARDS}::test_validate_fails_an_artifact_whose_shuffled_batch_differs",),
      "validate fails an artifact whose outputs depend on the batch"),
    # the edge box's cached reference outputs (exporter/validate.py)
    M("cache-ignores-model-sha", "exporter/validate.py",
      'if str(npz["model_sha256"]) == model_sha and str(npz["test_hash"]) == data_hash:',
      'if str(npz["test_hash"]) == data_hash:',
      (f"{GUARDS}::test_the_cached_reference_is_used_only_for_the_same_model_and_test_set",),
      "the cache is keyed by the model's sha256"),
    M("cache-ignores-test-hash", "exporter/validate.py",
      'if str(npz["model_sha256"]) == model_sha and str(npz["test_hash"]) == data_hash:',
      'if str(npz["model_sha256"]) == model_sha:',
      (f"{GUARDS}::test_the_cached_reference_is_used_only_for_the_same_model_and_test_set",),
      "the cache is keyed by the test set's hash"),
    M("cache-keyed-by-recorded-sha", "exporter/validate.py",
      "model_sha = sha256_path(ref_path) if ref_path.exists() else run.recorded_model_sha256",
      "model_sha = run.recorded_model_sha256",
      (f"{GUARDS}::test_the_cached_reference_is_used_only_for_the_same_model_and_test_set",),
      "the cache key is the model file's own sha256, not the manifest's record"),
    # the depth study's table units (exporter/experiment.py)
    M("depth-row-fraction", "exporter/experiment.py",
      '"test_accuracy": 100 * res.test_accuracy,',
      '"test_accuracy": res.test_accuracy,',
      ("tests/test_report_pipeline.py::test_depth_experiment_tiny",),
      "the depth study's figures are test accuracy in percent"),
    M("depth-table-units", "exporter/experiment.py",
      "lines.append(f\"| {d} | {p.get('test_accuracy', float('nan')):.2f}% |",
      "lines.append(f\"| {d} | {p.get('test_accuracy', float('nan')) / 100:.2f}% |",
      ("tests/test_report_pipeline.py::test_depth_experiment_tiny",),
      "depth.md's cells are the runs' accuracies in percent"),
    # from Python (exporter/api.py, exporter/run.py)
    M("api-check-ignored", "exporter/api.py",
      "return result.check() if check else result",
      "return result",
      (API_TEST,), "validate(check=True) raises ValidationFailed"),
    M("api-convert-run-ignored", "exporter/api.py",
      "            target = _run(run)\n",
      "            target = _run(None)\n",
      (API_TEST,), "rx.convert(run=...) converts that run"),
    M("api-report-not-written", "exporter/api.py",
      "return reporting.write_report(_run(run))",
      "return {'rows': []}",
      (API_TEST,), "rx.report writes report.md"),
    M("run-validation-reads-bench", "exporter/run.py",
      "return mf.read_json_if(self.path / VALIDATION_FILE)",
      "return mf.read_json_if(self.path / BENCH_FILE)",
      (API_TEST,), "Run.validation is validation.json"),
    M("run-bench-reads-validation", "exporter/run.py",
      "return mf.read_json_if(self.path / BENCH_FILE)",
      "return mf.read_json_if(self.path / VALIDATION_FILE)",
      (API_TEST,), "Run.bench is bench.json"),
    # the QAT float stem (exporter/quantize/qat.py, exporter/quantize/make.py; issue 32)
    M("stem-rounds-no-resize", "exporter/quantize/qat.py",
      "if a.name in names or (i < last and a.fixed is not None):",
      "if a.name in names or (i < last and (a.fixed is not None or a.tied)):",
      ("tests/test_qat_distill.py::test_a_float_stem_is_what_the_files_compute",),
      "a float stem keeps the rounding of a resize on the int8 input, as the files do"),
    M("stem-over-budget", "exporter/quantize/qat.py",
      "if weights > budget * total:",
      "if weights > 4 * budget * total:",
      ("tests/test_qat_distill.py::test_float_stem_plan_is_a_prefix_within_the_weight_budget",),
      "the float stem's weights stay within the budget"),
    M("stem-not-saved", "exporter/quantize/layers.py",
      '**({"keep_float": True} if self.keep_float else {})}',
      "}",
      ("tests/test_qat_distill.py::test_a_float_stem_is_what_the_files_compute",),
      "model_qat.keras keeps its float stem"),
    M("stem-never-tried", "exporter/quantize/make.py",
      "if best >= qat.FLOAT_STEM_TRIGGER:",
      "if best >= 0:",
      ("tests/test_qat_distill.py::test_the_float_stem_is_tried_below_the_trigger_and_kept_only_if_it_agrees_more",),
      "below the trigger the float stem is tried"),
    # Ctrl-C on a multi-kind convert (exporter/convert.py)
    M("ctrl-c-finished-kind-unsaved", "exporter/convert.py",
      "run.set_artifact(kind.name, entry)",
      "run.artifacts[kind.name] = entry",
      ("tests/test_errors.py::test_ctrl_c_in_a_multi_kind_convert_keeps_the_finished_kinds_recorded",),
      "Ctrl-C: finished artifacts stay recorded"),
    # inspect's exit codes (exporter/quantize/diagnose.py); these need the converted_run fixture (minutes)
    M("inspect-missing-artifact-exit", "exporter/quantize/diagnose.py",
      'raise UsageError(f"{run} has no {kind} artifact"',
      'raise ValidationFailed(f"{run} has no {kind} artifact"',
      ("tests/test_inspect.py::test_inspect_exit_codes_without_the_artifact_or_the_run",),
      "inspect: a run without the artifact is exit 2"),
    M("fallback-all-float-exit", "exporter/quantize/diagnose.py",
      "raise ValidationFailed(\n                f\"{kind.name}: even with all",
      "raise UsageError(\n                f\"{kind.name}: even with all",
      ("tests/test_inspect.py::test_fallback_auto_says_when_even_all_float_fails",),
      "a kind the fallback cannot make is that kind's failure: exit 70, the others written"),
]


def _copy_tree(dest: Path, root: Path = ROOT) -> None:
    for name in COPY:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        else:
            shutil.copy2(src, dest / name)


def _pytest(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                               *tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, out = -1, "timeout"
    lines = [line for line in out.splitlines() if line.strip()]
    return code, time.perf_counter() - start, lines[-1] if lines else ""


def apply(tree: Path, m: Mutation) -> None:
    path = tree / m.file
    text = path.read_text()
    count = text.count(m.original)
    if count != 1:
        raise SystemExit(f"{m.id}: the original snippet occurs {count} times in {m.file} (must be once)")
    path.write_text(text.replace(m.original, m.mutated))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="run the mutations whose id contains one of these words")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(w in m.id for w in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.id:45s} {m.file}: {m.promise}")
        return 0
    for m in chosen:  # every snippet must match the tree as it is, before anything runs
        if (ROOT / m.file).read_text().count(m.original) != 1:
            raise SystemExit(f"{m.id}: the original snippet does not occur exactly once in {m.file}")
    results, baselines = [], {}
    with tempfile.TemporaryDirectory(prefix="resexport-mutation-") as tmp:
        clean = Path(tmp) / "clean"
        clean.mkdir()
        _copy_tree(clean)
        for tests in dict.fromkeys(m.tests for m in chosen):
            code, secs, last = _pytest(clean, tests, args.timeout)
            baselines[tests] = code == 0
            print(f"baseline {'ok' if code == 0 else 'FAILS'} ({secs:.0f} s): {' '.join(tests)}  {last}", flush=True)
        for m in chosen:
            if not baselines[m.tests]:
                results.append({**asdict(m), "result": "no baseline", "seconds": 0.0, "last_line": ""})
                continue
            tree = Path(tmp) / m.id
            tree.mkdir()
            _copy_tree(tree, clean)  # from the snapshot taken at the start, not the live worktree
            apply(tree, m)
            code, secs, last = _pytest(tree, m.tests, args.timeout)
            # pytest exit 1: tests failed (killed); 0: passed (survived); anything else (collection error,
            # timeout) says nothing about the tests' power
            result = {0: "survived", 1: "killed"}.get(code, "error")
            results.append({**asdict(m), "result": result, "exit": code, "seconds": round(secs, 1), "last_line": last})
            print(f"{result:8s} {m.id} ({secs:.0f} s)  {last}", flush=True)
            shutil.rmtree(tree)
    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                       "cores": os.cpu_count()},
           "summary": {r: sum(x["result"] == r for x in results) for r in ("killed", "survived", "error", "no baseline")},
           "mutations": results}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "mutation" if not args.only else "mutation-" + "-".join(args.only)
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = ["# Mutation check (tests/mutation.py)", "",
          f"{doc['summary']}; each mutant: one line of the library changed, its covering tests run with `pytest -x -q`.",
          "", "| mutation | file | promise | result | s | covering tests |", "|---|---|---|---|---:|---|"]
    for r in results:
        tests = ", ".join(t.split("::")[-1] for t in r["tests"])
        md.append(f"| `{r['id']}` | {r['file']} | {r['promise']} | **{r['result']}** | {r['seconds']} | {tests} |")
    (args.out / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if doc["summary"]["killed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
