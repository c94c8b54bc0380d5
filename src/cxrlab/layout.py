"""Every file a run directory holds, named once. ``RunDir`` (core/runs.py) gives each its path; the status check,
which must answer without importing torch, reads the names here."""

RUN_FILES = {
    "config": "config.yaml",  # the resolved config: every option
    "data": "data.json",  # data provenance: file, MD5, real/phantom, per-split class counts
    "history": "history.csv",  # one row per epoch
    "last_checkpoint": "checkpoints/last.pt",  # resumable training state, written every epoch
    "weights": "model.safetensors",  # the best epoch's weights
    "summary": "summary.json",  # best epoch, classes, parameter count, timings; present once training finished
    "operating_point": "operating_point.json",  # the single threshold, the refer band, and their evidence
    "test_metrics": "metrics.json",  # the reported numbers; metrics_<split>.json for the other splits
    "plots": "plots",  # curves, confusion matrix, ROC, prediction grid
    "ood_arrays": "ood.npz",  # the out-of-distribution check's arrays
    "ood_report": "ood.json",  # its method, threshold and measured shares flagged
    "onnx": "model.onnx",  # the exported fp32 model, with the check and the preprocessing in its graph
    "int8_onnx": "model.int8.onnx",  # the INT8 model, only where quantisation shipped one
    "export_report": "export.json",  # how the ONNX file was checked against PyTorch
    "quantization_report": "quantization.json",  # what quantisation measured and whether it shipped
    "bench_report": "bench.json",  # cxrlab bench's timings
    "worker": "worker.json",  # present while a process trains the run: its pid and host
}

# The files of a compare (or cv) study's folder that the sealed scoring step reads and writes (report/choices.py).
STUDY_FILES = {
    "options": "compare.yaml",  # the study's options and the runs' training options: `compare --config` reproduces it
    "cv_options": "cv.yaml",  # a cross-validation's training options and number of folds (report/crossval.py)
    "choices": "choices.json",  # every choice, written before test is read; its SHA-256 is named in the report
    "seal": "seal.json",  # whether test is still sealed, and when it was scored, by which choices
    "comparison": "comparison.csv",  # every entry and seed, scored on test
    "answers": "test_answers.csv",  # every entry's answer for every test image, as the deployed entry gives it
    "scoring_lock": "scoring.lock",  # present while a process scores test: who
}

# A site folder (`cxrlab site calibrate --out DIR`, report/site.py): the operating point chosen at the site, how, and
# the entry it was chosen for.
SITE_FILE = "site.json"
