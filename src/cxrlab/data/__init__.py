"""Data: the data sets (datasets.py), their files (datafile.py), the tasks (task.py), phantom files, batched
augmentation and image files. ``cxrlab.data(...)`` itself returns a task's splits: see cxrlab.api.data."""

import sys
import types


class _CallableModule(types.ModuleType):
    """This package, callable: ``cxrlab.data(dataset="pneumoniamnist")`` as the API promises, while
    ``cxrlab.data.task`` and the other modules stay importable under the same name."""

    def __call__(self, *args, **kwargs):
        from cxrlab.api import data

        return data(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
