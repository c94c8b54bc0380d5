"""Data: the data sets (datasets.py), their files (datafile.py), the tasks (task.py), phantom files, batched
augmentation and image files. A task's splits in one call: ``cxrlab.load_data(...)`` (cxrlab.api)."""
