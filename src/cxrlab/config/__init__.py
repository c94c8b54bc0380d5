"""The options schema: ``Config`` (a run's options), ``Study`` (a compare study's), and how both are declared and
read (``schema``). Everything is imported from here: ``from cxrlab.config import Config``."""

from cxrlab.config.options import (
    DECISIONS,
    OPTION_TYPES,
    POINT_OPTIONS,
    PUBLIC_OPTIONS,
    SCORING_OPTIONS,
    SELECT_METRICS,
    THRESHOLD_RULES,
    Config,
    config_fields,
    default_run_path,
    from_dict,
    load_config,
    options,
    resolve,
)
from cxrlab.config.schema import GROUPS, OptionType, load_yaml, option_types
from cxrlab.config.selection import HIGHER_IS_BETTER, improved, score_of
from cxrlab.config.study import STUDY_KEYS, Study, normalised_weights, study_from
from cxrlab.models.architectures import MODEL_NAMES

__all__ = [
    "DECISIONS",
    "GROUPS",
    "HIGHER_IS_BETTER",
    "MODEL_NAMES",
    "OPTION_TYPES",
    "POINT_OPTIONS",
    "PUBLIC_OPTIONS",
    "SCORING_OPTIONS",
    "SELECT_METRICS",
    "STUDY_KEYS",
    "THRESHOLD_RULES",
    "Config",
    "OptionType",
    "Study",
    "config_fields",
    "default_run_path",
    "from_dict",
    "improved",
    "load_config",
    "load_yaml",
    "normalised_weights",
    "option_types",
    "options",
    "resolve",
    "score_of",
    "study_from",
]
