"""Every int8 artifact comes from here: `make_int8` for one calibrated kind, by remedy

- ptq: calibration only (export_int8: the converter's post-training quantisation);
- qat: quantisation-aware fine-tuning (exporter.quantize.qat), exported from the fine-tuned model. By
  default distilled from the original (its outputs are the target: images only, `qat_images` or the
  training split) and judged against the ORIGINAL like a PTQ file; with qat_loss='labels' a retrained
  model, judged against the fine-tuned model it became (and its accuracy drop against the original);
- fallback: the fewest layers kept in float32 (exporter.quantize.diagnose.fallback_search);
- auto: the cheapest that passes, in that order (ptq, then qat, then fallback on top of the better of
  the two: of the original, or of the fine-tuned model), each judged on the hold-out slice by
  exporter.quantize.judge; the ladder tried is recorded.

`Int8Session` holds what the kinds of one convert call share: the hold-out slice, the reference's
outputs on it, the fine-tuned model (trained once, saved in the run as model_qat.keras)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from exporter import formats
from exporter.errors import ResexportError, UsageError
from exporter.fsutil import atomic_path, sha256_file
from exporter.export.conformance import write_checked
from exporter.export.source import ExportSource
from exporter.quantize.diagnose import DEFAULT_HOLDOUT, fallback_search, holdout, holdout_seen
from exporter.quantize.judge import judge, top2_margin
from exporter.run import Run
from exporter.runtimes import load_runner

log = logging.getLogger(__name__)

INT8_CHOICES = ("ptq", "qat", "fallback", "auto")
QAT_FILE = "model_qat.keras"


def check_int8(mode: str) -> str:
    if mode not in INT8_CHOICES:
        raise UsageError(f"unknown --int8 '{mode}'", hint=f"choose one of: {', '.join(INT8_CHOICES)}")
    return mode


class Int8Session:
    def __init__(self, *, run, source, dataset, calibration, target_cpu: str = "auto",
                 qat_epochs: float | None = None, qat_steps: int | None = None, qat_lr: float | None = None,
                 qat_loss: str | None = None, qat_label_weight: float | None = None, qat_images=None,
                 qat_float_stem: str = "auto"):
        """qat_images: exporter.data.Images to fine-tune on (--qat-data; default: the training split
        minus the hold-out). qat_loss: 'distill' (default) or 'labels' (exporter.quantize.qat.LOSSES).
        qat_float_stem: 'auto' (a distilled fine-tuning below qat.FLOAT_STEM_TRIGGER on its held-back images
        is run again with its first layers float32: _float_stem) or 'off'."""
        from exporter.quantize import qat

        self.run, self.source, self.dataset = Run.of(run), source, dataset
        self.calibration, self.target_cpu = calibration, target_cpu
        self.qat_epochs = qat_epochs
        self.qat_steps = qat_steps if qat_steps is not None else (None if qat_epochs else qat.DEFAULT_STEPS)
        self.qat_loss = qat.check_loss(qat_loss or qat.DEFAULT_LOSS)
        self.qat_lr = qat_lr or qat.default_lr(self.qat_loss)
        self.qat_label_weight = qat.DEFAULT_LABEL_WEIGHT if qat_label_weight is None else float(qat_label_weight)
        self.qat_images = qat_images
        self.qat_float_stem = qat.check_float_stem(qat_float_stem)
        self.qat_batch = qat.DEFAULT_BATCH
        self.convention = self.run.output or "probabilities"
        self._hold = self._ref = self._qat = self._qat_ref = self._difficulty = None
        self._qat_error: UsageError | None = None

    # ------------------------------------------------------------------ shared state
    def holdout(self):
        if self._hold is None:
            hold, labels = holdout(self.run, self.dataset, self.calibration, DEFAULT_HOLDOUT)
            self._hold = (hold, labels, holdout_seen(self.run, self.dataset))
        return self._hold

    def reference(self) -> np.ndarray:
        """The original's outputs on the hold-out; with one load of the model, its test-input margins
        too when the hold-out will be reweighted to them (difficulty)."""
        if self._ref is None:
            runner = load_runner(self.source.path, kind=self.source.family)
            try:
                self._ref = runner.predict_batched(self.holdout()[0].x, 256)
                if self.holdout()[2] is not False:
                    margins = top2_margin(runner.predict_batched(self.dataset.x_test, 256), self.convention)
                    self._difficulty = {**(self._difficulty or {}), "original": margins}
            finally:
                runner.close()
        return self._ref

    def difficulty(self, of: str = "original") -> np.ndarray | None:
        """A reference's top-2 margins on the test inputs (labels unused), which the hold-out is
        reweighted to when it may hold training images (judge.difficulty_matched); None otherwise.
        of: the reference the hold-out is binned by: 'original' (the run's model) or 'qat' (the
        fine-tuned model, the reference of QAT's first claim; its margins are its own, on its int8
        output grid, and binning them by the original's margins left bins empty)."""
        if self._difficulty is None:
            self._difficulty = {}
        if of not in self._difficulty:
            self._difficulty[of] = False
            if self.holdout()[2] is not False:
                if of == "original":
                    self.reference()  # computes it with the hold-out's outputs (one load of the model)
                else:
                    qmodel, x = self.qat_model()[0], self.dataset.x_test
                    outputs = np.concatenate([qmodel(np.asarray(x[i: i + 256], np.float32), training=False).numpy()
                                              for i in range(0, len(x), 256)])
                    self._difficulty[of] = top2_margin(outputs, self.convention)
        value = self._difficulty.get(of, False)
        return None if value is False else value

    def qat_model(self):
        """The fine-tuned QAT model (built, calibrated, fine-tuned once) and its record."""
        if self._qat_error is not None:
            raise self._qat_error
        if self._qat is None:
            try:
                self._qat = self._fine_tune()
            except UsageError as exc:
                self._qat_error = exc
                raise
        return self._qat

    def _fine_tune(self):
        from exporter.quantize import qat

        if self.source.family != "keras":
            raise UsageError("QAT needs the run's Keras model (.keras or .h5), not a SavedModel",
                             hint="use --int8 ptq or fallback")
        start = time.perf_counter()
        model = self.source.keras_model()
        distill = self.qat_loss == "distill"
        qmodel, notes = qat.build_qat_model(model, inference_layers=distill)
        calib = np.asarray(self.calibration.x, np.float32)
        qat.calibrate(qmodel, calib)
        x, y, images_from, batch, steps, available = self._fine_tune_images()
        teacher = select = None
        if distill:  # the original, in inference mode, once: the targets (and the checkpoints' judge)
            teacher = np.concatenate([model(np.asarray(x[i: i + 256], np.float32), training=False).numpy()
                                      for i in range(0, len(x), 256)]) if len(x) else np.zeros((0, 1), np.float32)
            held = min(qat.SELECT_IMAGES, len(x) // 5)
            if held:  # drawn at random: a folder's images come class by class
                back = np.zeros(len(x), bool)
                back[np.random.default_rng(1).choice(len(x), size=held, replace=False)] = True
                select = (x[back], teacher[back])
                x, teacher, y = x[~back], teacher[~back], None if y is None else y[~back]
        log.info("QAT: fine-tuning %s for %d steps on %d images (%s)", model.name, steps, len(x),
                 "distilled from the original" if teacher is not None else "on the labels")

        def tune(qm):
            return qat.fine_tune(qm, x, y, epochs=max(1, int(np.ceil(steps * batch / max(len(x), 1)))), steps=steps,
                                 batch_size=batch, lr=self.qat_lr, output=self.convention, loss=self.qat_loss,
                                 teacher_outputs=teacher, label_weight=self.qat_label_weight, select=select)

        record = tune(qmodel)
        if select is not None and self.qat_float_stem == "auto":
            qmodel, record = self._float_stem(model, calib, qmodel, record, tune)
        path = self.run / QAT_FILE
        with tempfile.TemporaryDirectory(prefix="resexport-qat-") as tmpdir:
            tmp_model = Path(tmpdir) / QAT_FILE
            qmodel.save(tmp_model)
            with atomic_path(path) as tmp:
                shutil.copyfile(tmp_model, tmp)
        record = {**record, "epochs_over_images": round(record["steps"] * batch / max(available, 1), 3),
                  "images_from": images_from,
                  "judged_against": "original" if self.qat_loss == "distill" else "fine-tuned",
                  "ranges": f"activations: min/max over the {len(calib)} calibration images, then EMA "
                            f"(decay {qat.EMA_DECAY}) while fine-tuning (sigmoid/softmax/tanh: the kernels' fixed "
                            "ranges; an interpolating resize: its input's); weights: max |w| per output channel "
                            "(Dense too), symmetric, narrow range; biases on the int32 grid (input x weight step)",
                  "rebuild": notes, "model_file": QAT_FILE, "model_sha256": sha256_file(path),
                  "route": "Keras 3 rebuild with tf.quantization fake-quant ops (exporter.quantize.qat)",
                  "seconds_total": round(time.perf_counter() - start, 1)}
        qat_ref = qmodel.predict(self.holdout()[0].x, batch_size=256, verbose=0)
        return qmodel, record, qat_ref

    def _float_stem(self, model, calib, qmodel, record, tune):
        """When the full-int8 fine-tuning's best checkpoint agrees with the original on fewer than
        qat.FLOAT_STEM_TRIGGER % of the held-back images: the same fine-tuning again with the first layers kept
        float32 (qat.float_stem_plan), kept if it agrees more there. Returns (model, record), the record with
        a float_stem entry saying what was tried and why."""
        from exporter.quantize import qat

        def held_back(rec) -> float:  # the kept checkpoint's agreement with the original on the held-back images
            return max(a for _, a in rec["selection"]["agreement_by_step"])

        best = held_back(record)
        stem = {"policy": "auto", "trigger": qat.FLOAT_STEM_TRIGGER, "budget": qat.FLOAT_STEM_BUDGET,
                "full_int8_held_back_agreement": best, "layers": []}
        if best >= qat.FLOAT_STEM_TRIGGER:
            return qmodel, {**record, "float_stem": {**stem, "why": "full int8 agreed enough on held-back images"}}
        stem_model, _ = qat.build_qat_model(model, inference_layers=True)
        qat.calibrate(stem_model, calib)
        plan = qat.float_stem_plan(stem_model)
        if not plan["ranges"]:
            return qmodel, {**record, "float_stem": {**stem, "why": "no layer fits the float budget"}}
        qat.apply_float_stem(stem_model, plan["ranges"])
        log.info("QAT: full int8 agreed %.2f%% with the original on held-back images (< %g%%): fine-tuning again "
                 "with %d layers kept float32", best, qat.FLOAT_STEM_TRIGGER, len(plan["layers"]))
        stem_record = tune(stem_model)
        stem_best = held_back(stem_record)
        layers = [n[:-2] if n.endswith("_q") else n for n in plan["layers"]]
        tried = {**stem, "held_back_agreement": stem_best, "ranges": plan["ranges"],
                 "float_weights": plan["float_weights"], "weights": plan["weights"],
                 "seconds": stem_record["seconds"], "full_int8_selection": record["selection"]}
        if stem_best <= best:
            return qmodel, {**record, "float_stem": {**tried, "kept": False, "tried_layers": layers,
                                                     "why": "the float stem agreed no more on held-back images"}}
        return stem_model, {**stem_record, "seconds": round(record["seconds"] + stem_record["seconds"], 1),
                            "float_stem": {**tried, "kept": True, "layers": layers,
                                           "why": f"full int8 agreed {best:.2f}% on held-back images "
                                                  f"(< {qat.FLOAT_STEM_TRIGGER:g}%)"}}

    def _fine_tune_images(self):
        """(x, labels or None, where from, batch, steps, images available): --qat-data's images, or the
        training split minus the hold-out slice; at most steps x batch of them, drawn once (seeded)."""
        batch = self.qat_batch
        rng = np.random.default_rng(0)
        if self.qat_images is not None:
            imgs = self.qat_images
            n = len(imgs.x)
            steps = self.qat_steps or int(np.ceil(self.qat_epochs * n / batch))
            take = np.sort(rng.choice(n, size=min(n, steps * batch), replace=False))
            if self.qat_loss == "labels" and imgs.labels is None:
                raise UsageError(f"--qat-loss labels needs labels, and --qat-data {imgs.origin.get('path')} has none",
                                 hint="use --qat-loss distill (the default: images only), or an .npz with y")
            y = None if imgs.labels is None else np.asarray(imgs.labels[take])
            return (np.asarray(imgs.x[take], np.float32), y, {"qat_data": imgs.describe()}, batch, steps, n)
        hold = self.holdout()[0]
        ds = self.dataset
        avail = np.setdiff1d(np.arange(len(ds.y_train)), hold.indices)
        steps = self.qat_steps or int(np.ceil(self.qat_epochs * len(avail) / batch))
        take = np.sort(rng.choice(avail, size=min(len(avail), steps * batch), replace=False))
        return (np.asarray(ds.x_train[take], np.float32), np.asarray(ds.y_train[take]),
                "training split minus the hold-out slice" + (" (labels unused)" if self.qat_loss == "distill" else ""),
                batch, steps, len(avail))

    # ------------------------------------------------------------------ remedies
    def _judge(self, out_path: Path, kind, reference=None, gates=None, of: str = "original") -> dict:
        runner = load_runner(out_path, kind=kind.name)
        out = runner.predict_batched(self.holdout()[0].x, 256)
        runner.close()
        return self._verdict(out, kind, reference, gates, of=of)

    def _verdict(self, outputs: np.ndarray, kind, reference=None, gates=None, of: str = "original") -> dict:
        """Judged against `reference` (default: the original's outputs); `of` names whose outputs
        those are, for the difficulty matching."""
        hold, labels, seen = self.holdout()
        ref = self.reference() if reference is None else reference
        return judge(ref, outputs, labels, self.dataset.class_names, gates or kind.gates,
                     convention=self.convention, seen=seen, difficulty=self.difficulty(of))

    def ptq(self, kind, out: Path) -> dict:
        return {"int8": "ptq", "fallback": "none", "float_layers": [],
                **kind.load_exporter()(self.source, out, self.calibration, target_cpu=self.target_cpu)}

    def qat(self, kind, out: Path, judged: bool = True) -> dict:
        qmodel, record, qat_ref = self.qat_model()
        details = kind.backend().export_qat_int8(qmodel, out, tuple(qmodel.input_shape[1:]),
                                                 target_cpu=self.target_cpu)
        result = {"int8": "qat", "fallback": "none", "float_layers": (record.get("float_stem") or {}).get("layers", []),
                  **details, "qat": record}
        if judged:
            result["qat"] = {**record, **self.qat_claims(kind, out, qat_ref)}
        return result

    def qat_claims(self, kind, out: Path, qat_ref) -> dict:
        """Distilled (default): the file is good when it agrees with the ORIGINAL within the kind's gates
        (agreement and drop), exactly like a PTQ file; that it computes what the fine-tuned model computes
        is reported (it proves the simulation), not gated. Labels (a retrained model): claim 1, the file
        computes what the fine-tuned model computes (int8 gates against it); claim 2, it keeps the original's
        accuracy (the drop gate against the original; the agreement with the original reported)."""
        same = self._judge(out, kind, reference=qat_ref, of="qat")
        if self.qat_loss == "distill":
            agrees = self._judge(out, kind)
            return {"claims": {"agrees_with_the_original": agrees, "computes_the_qat_model": {**same, "gated": False}},
                    "passed": agrees["passed"]}
        keeps = self._judge(out, kind, gates=replace(kind.gates, min_agreement=None))
        return {"claims": {"computes_the_qat_model": same, "keeps_the_original_accuracy": keeps},
                "passed": same["passed"] and keeps["passed"]}

    def fallback(self, kind, out: Path, on: str = "ptq") -> dict:
        """The fewest layers kept float that pass. on='ptq': of the original model, judged against it.
        on='qat': of the fine-tuned model (its float twin quantised from calibration), judged as its QAT
        files are: distilled, against the original (agreement with the fine-tuned model reported); labels,
        by the two claims (agreement with the fine-tuned model, drop against the original)."""
        if on == "ptq":
            return {"int8": "fallback", "fallback_on": "ptq",
                    **fallback_search(kind=kind, source=self.source, out=out, calibration=self.calibration,
                                      dataset=self.dataset, run=self.run, target_cpu=self.target_cpu,
                                      reference=self.reference(), difficulty=self.difficulty())}
        from exporter.quantize import qat

        qmodel, record, qat_ref = self.qat_model()
        twin = ExportSource(path=self.run / QAT_FILE, family="keras", input_shape=self.source.input_shape,
                            input_name=self.source.input_name, num_classes=self.source.num_classes,
                            _model=qat.float_twin(qmodel))
        distilled = self.qat_loss == "distill"
        if distilled:  # judged against the original; what it computes of the fine-tuned model reported
            reference, difficulty = self.reference(), self.difficulty()
            also = lambda outputs: {**self._verdict(outputs, kind, reference=qat_ref, of="qat"), "passed": True,
                                    "failures": [], "gated": False}  # noqa: E731
        else:
            keeps_gates = replace(kind.gates, min_agreement=None)
            reference, difficulty = qat_ref, self.difficulty("qat")
            also = lambda outputs: self._verdict(outputs, kind, gates=keeps_gates)  # noqa: E731
        try:
            details = fallback_search(kind=kind, source=twin, out=out, calibration=self.calibration,
                                      dataset=self.dataset, run=self.run, target_cpu=self.target_cpu,
                                      reference=reference, difficulty=difficulty, also=also)
        finally:
            twin.cleanup()
        chosen = dict(details["fallback_search"]["chosen"])
        second = chosen.pop("also")
        claims = ({"agrees_with_the_original": chosen, "computes_the_qat_model": second} if distilled
                  else {"computes_the_qat_model": chosen, "keeps_the_original_accuracy": second})
        return {"int8": "fallback", "fallback_on": "qat", **details,
                "qat": {**record, "claims": claims, "passed": chosen["passed"]}}

    def auto(self, kind, out: Path) -> dict:
        """The cheapest remedy that passes on the hold-out's bounds: ptq, qat, fallback."""
        ladder: list[dict] = []
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="resexport-int8-") as tmpdir:
            tried: list[tuple[dict, Path, dict]] = []
            for remedy in ("ptq", "qat"):
                t0 = time.perf_counter()
                path = Path(tmpdir) / f"{remedy}{Path(kind.filename).suffix}"
                try:
                    details = self.ptq(kind, path) if remedy == "ptq" else self.qat(kind, path)
                except UsageError as exc:  # QAT refuses this model: say why and go on
                    ladder.append({"remedy": remedy, "skipped": str(exc)})
                    log.info("int8 auto %s: %s skipped (%s)", kind.name, remedy, exc)
                    continue
                verdict = details["qat"] if remedy == "qat" else self._judge(path, kind)
                step = {"remedy": remedy, "passed": verdict["passed"], "bytes": path.stat().st_size,
                        "seconds": round(time.perf_counter() - t0, 1),
                        **({"verdict": verdict} if remedy == "ptq" else {})}
                ladder.append(step)
                log.info("int8 auto %s: %s %s", kind.name, remedy, "passes" if verdict["passed"] else "fails")
                tried.append((details, path, step))
                if verdict["passed"]:
                    self._place(path, out, kind)
                    return {**details, "int8": "auto", "chosen": remedy, "ladder": ladder,
                            "seconds_ladder": round(time.perf_counter() - start, 1)}
            bases = self._bases(tried)
            for base in bases:  # the better base first; the other if even all-float fails on it
                t0 = time.perf_counter()
                try:
                    details = self.fallback(kind, out, on=base)
                except ResexportError as exc:
                    ladder.append({"remedy": "fallback", "on": base, "passed": False, "error": str(exc),
                                   "seconds": round(time.perf_counter() - t0, 1)})
                    error = exc
                    continue
                ladder.append({"remedy": "fallback", "on": base, "passed": True, "bytes": out.stat().st_size,
                               "float_layers": len(details["float_layers"]),
                               "seconds": round(time.perf_counter() - t0, 1)})
                return {**details, "int8": "auto", "chosen": "fallback", "ladder": ladder,
                        "seconds_ladder": round(time.perf_counter() - start, 1)}
            if not tried:
                raise error
            details, path, step = tried[-1]
            log.warning("%s: no int8 remedy passed on the hold-out slice; writing the %s artifact", kind.name,
                        step["remedy"])
            self._place(path, out, kind)
            return {**details, "int8": "auto", "chosen": step["remedy"], "passed_holdout": False,
                    "ladder": ladder, "seconds_ladder": round(time.perf_counter() - start, 1)}

    @staticmethod
    def _bases(tried: list[tuple[dict, Path, dict]]) -> list[str]:
        """The fallback's bases, best first: 'qat' (the fine-tuned model) and 'ptq' (the original),
        ranked by how close their hold-out agreement bound came to what they are judged against (distilled
        QAT: the original; label QAT: the fine-tuned model it computes); only 'ptq' when QAT was not tried."""
        def bound(details: dict, step: dict) -> float:
            if step["remedy"] == "qat":
                claims = details["qat"]["claims"]
                return (claims.get("agrees_with_the_original") or claims["computes_the_qat_model"])["agreement_lower_bound"]
            return step["verdict"]["agreement_lower_bound"]

        ranked = [remedy for _, remedy in sorted(((bound(d, step), step["remedy"]) for d, _, step in tried),
                                                 reverse=True)]
        return ranked + ["ptq"] if "ptq" not in ranked else ranked

    def _place(self, candidate: Path, out: Path, kind: formats.ArtifactKind) -> None:
        """The chosen candidate file becomes the artifact, through the exporters' conformance gate."""
        write_checked(out, candidate.read_bytes(), kind.name, input_shape=self.source.input_shape,
                      num_classes=self.source.num_classes)

    def make(self, kind: formats.ArtifactKind, out: Path, mode: str) -> dict:
        check_int8(mode)
        return getattr(self, mode)(kind, out)
