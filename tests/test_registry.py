"""Methods by name: STRIDE loads without any baseline, and a method can be added."""

import subprocess
import sys

import pytest
import torch

from stride.attributor import Attributor, MethodContext
from stride.errors import StrideError
from stride import registry
from stride.registry import BUILTIN, available_methods, create_attributor, register


def test_importing_stride_and_its_api_imports_no_baseline_or_peer_library():
    code = (
        "import sys, stride.api, stride.method.attributor, stride.classifiers;"
        "loaded = [m for m in sys.modules if m.startswith(('stride.baselines', 'trak', 'kronfluence', 'bm25s'))];"
        "print(loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_builtin_factory_exists_and_unknown_names_are_listed():
    import importlib

    for name, target in BUILTIN.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    with pytest.raises(StrideError, match="available: .*stride"):
        create_attributor("no-such-method", MethodContext(torch.nn.Linear(1, 1), None))


class _Constant(Attributor):
    name = "constant"

    def settings(self):
        return {}

    def prepare(self, train):
        self.n_train = len(train)

    def score(self, queries):
        return torch.ones(len(queries), self.n_train)


def test_a_registered_method_is_created_by_name(monkeypatch):
    monkeypatch.setattr(registry, "ADDED", {})
    register("constant", lambda context: _Constant(context.store))
    assert "constant" in available_methods()
    assert isinstance(create_attributor("constant", MethodContext(torch.nn.Linear(1, 1), None)), _Constant)
