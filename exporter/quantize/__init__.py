"""The one home of int8: post-training quantisation (calibration only), quantisation-aware
fine-tuning (qat), per-layer diagnosis and the float-fallback search (diagnose), the hold-out
judgement (judge), and `make.Int8Session`, which every int8 artifact of `convert` comes from.
The files themselves are written by exporter/export/ (atomic writes)."""
