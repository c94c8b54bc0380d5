"""Every subcommand's examples, shown at the end of its --help."""

EXAMPLES = {
    "data": """
        cxrlab data                                   # official file in ~/.medmnist
        cxrlab data --data-root data/phantom          # a phantom file
        cxrlab data --classes effusion pneumothorax --size 64 --download
        cxrlab data --task multilabel                 # all 14 labels
        cxrlab data --dataset pneumoniamnist --download   # PneumoniaMNIST: normal vs pneumonia
        cxrlab data --dataset pneumoniamnist --duplicates --duplicates-csv pairs.csv   # near-duplicates within and across splits""",
    "phantom": """
        cxrlab phantom --out data/phantom                      # small file: 2000/400/600 rows
        cxrlab phantom --out data/phantom --official-counts    # the official split sizes and binary counts
        cxrlab phantom --out data/phantom --size 64 --seed 1
        cxrlab phantom --out data/phantom --dataset pneumoniamnist --official-counts""",
    "train": """
        cxrlab train --data-root data/phantom --model densenet121 --epochs 5
        cxrlab train --config configs/example.yaml --out runs/mnv3
        cxrlab train --task multilabel --size 64 --model densenet121    # all 14 labels, medmnist's AUC/ACC
        cxrlab train --dataset pneumoniamnist --download --epochs 10
        cxrlab train --config configs/medmnist_v2.yaml --dataset pneumoniamnist   # MedMNIST v2's ResNet-18 recipe
        cxrlab train --resume runs/mnv3                        # continue an interrupted run""",
    "evaluate": """
        cxrlab evaluate runs/mnv3                  # test split, at the operating point chosen without test
        cxrlab evaluate runs/mnv3 --split val""",
    "predict": """
        cxrlab predict runs/mnv3 xray1.png xray2.jpg
        cxrlab predict runs/study xray1.png --out answers.csv              # a scored study's headline entry, first seed
        cxrlab predict runs/study xray1.png --entry ensemble --seed 1     # another of its entries""",
    "compare": """
        cxrlab compare --data-root data/phantom --epochs 3 --seeds 0 1 --tta 8 --out runs/demo   # trains, chooses; test sealed
        cxrlab score runs/demo                                  # then test, once, by the choices written down
        cxrlab compare --download --score-test                  # the full study, scored in the same command: 3 models x 3 seeds
        cxrlab compare --dataset pneumoniamnist --models mobilenet_v3_large resnet18 --recipe resnet18=configs/medmnist_v2.yaml
        cxrlab compare --ensemble 0.5 0.3 0.2 --threshold sensitivity --target-sensitivity 0.9
        cxrlab compare --config runs/demo/compare.yaml          # reproduce a report (reuses its runs)
        cxrlab compare --workers 1 --threads 2                  # one run at a time with two threads (default: one run per core)""",
    "score": """
        cxrlab score runs/demo                   # test, once, by runs/demo/choices.json; writes report.md / .html
        cxrlab score runs/demo --rescore         # again (refused without it); the report says it was rescored
        cxrlab score runs/cv                     # a cross-validation's: cv.md / .html with test""",
    "ood": """
        cxrlab ood runs/mnv3                     # fit the out-of-distribution check of a run trained before it existed
        cxrlab ood runs/compare/runs/*-seed*     # every run of a study, without retraining""",
    "operating-point": """
        cxrlab operating-point runs/mnv3                          # a run trained before operating points: choose its refer band
        cxrlab operating-point runs/mnv3 --rule-out-sensitivity 0.99 --rule-in-specificity 0.95
        cxrlab operating-point runs/compare/runs/*-seed* --decision single   # answer every image at the single threshold""",
    "status": """
        cxrlab status runs/compare               # a compare study: runs finished / running / left, time left
        cxrlab status runs/cv                    # a cross-validation's fold runs
        watch -n 60 cxrlab status runs/compare   # from a second shell while the study trains""",
    "explain": """
        cxrlab explain runs/mnv3 xray1.png xray2.dcm --out explained/   # one overlay PNG per image
        cxrlab explain runs/mnv3 --val-grid --out explained/             # a grid of val images with overlays
        cxrlab explain runs/study xray1.png --entry ensemble --out explained/   # a study's entry: its answer, its first run's map""",
    "export": """
        cxrlab export runs/mnv3                  # model.onnx (checked against PyTorch), then the INT8 trials
        cxrlab export runs/mnv3 --no-quantize""",
    "bench": """
        cxrlab bench runs/mnv3                   # eager, channels_last, onnxruntime fp32 / INT8, predict end to end""",
    "serve": """
        cxrlab serve runs/mnv3                   # http://127.0.0.1:8000  (web page), /docs (API)
        cxrlab serve runs/study                  # a scored study's headline entry (first seed), as the report scored it
        cxrlab serve runs/study --entry ensemble --seed 2
        cxrlab serve runs/mnv3 --host 0.0.0.0 --token-file ~/.cxrlab-token   # beyond this machine: a token is required
        CXRLAB_TOKEN=$(cat ~/.cxrlab-token) cxrlab serve runs/mnv3 --host 0.0.0.0 --port 8080 --max-upload-mb 20""",
    "site": """
        cxrlab site check runs/study site-images/ --out site-check/       # unlabelled: has anything changed?
        cxrlab site check runs/study site.npz --split test                 # an official-layout npz's test images
        cxrlab site calibrate runs/study labels.csv --site "St Elsewhere" --out runs/site-elsewhere
        cxrlab predict runs/site-elsewhere xray.png                        # answers by the site's operating point
        cxrlab serve runs/site-elsewhere""",
    "robustness": """
        cxrlab robustness runs/mnv3 --out robustness/            # a run: 13 corruptions x 5 severities on val
        cxrlab robustness runs/study --entry ensemble --seed 1   # a study's entry""",
    "cv": """
        cxrlab cv --data-root data/phantom --model efficientnet_b0 --folds 5 --epochs 3 --out runs/cv   # test sealed
        cxrlab score runs/cv                     # then test, once, by runs/cv/choices.json
        cxrlab cv --config configs/example.yaml --folds 5 --workers 2 --threads 1 --score-test   # both in one command""",
    "search": """
        cxrlab search --method grid --data-root data/phantom --epochs 3          # all 27 grid points
        cxrlab search --method optuna --trials 30 --workers 2 --out runs/search  # TPE + median pruning
        cxrlab search --storage postgresql://user@db/optuna --study cxr1         # workers on several machines
        cxrlab train --config runs/search/best.yaml                              # train the winner""",
}
