"""Models: the architectures table (architectures.py, no torch), their adaptation and creation (registry.py), the
segmentation preprocessor and the feature probe of the out-of-distribution check."""
