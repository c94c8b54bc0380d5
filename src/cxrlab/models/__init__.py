from cxrlab.models.registry import ARCHITECTURES, count_parameters, create_model, freeze_frozen_norms, model_from_config, set_trainable

__all__ = ["ARCHITECTURES", "count_parameters", "create_model", "freeze_frozen_norms", "model_from_config", "set_trainable"]
