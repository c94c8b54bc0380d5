from cxrlab.models.registry import ARCHITECTURES, count_parameters, create_model, model_from_config

__all__ = ["ARCHITECTURES", "count_parameters", "create_model", "model_from_config"]
