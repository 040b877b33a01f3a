"""speculators' own loader (vendored verbatim in `speculators_vendored/`) as importable modules.

`load()` registers the vendored files under the names they import each other by
(`hs_connectors`, `hs_connectors.transfer`, `hs_connectors.fp8_utils`,
`speculators.train.data`, `speculators.train.vocab_mapping`) and returns them. What
the offline path never calls (the vLLM hidden-state client, the Mooncake store, the
noise transforms) gets empty stand-ins, so `ArrowDataset(on_missing="raise")`, the
`CollateFn` and `FP8Transfer` run unmodified.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

VENDORED = Path(__file__).parent / "speculators_vendored"


def stub(name: str, **attrs) -> types.ModuleType:
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__path__ = []  # a package, so submodules can be registered under it
    sys.modules[name] = module
    return module


def vendored(name: str, file: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, VENDORED / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def unused(*_args, **_kwargs):
    raise AssertionError("the offline path never generates hidden states")


def load() -> types.SimpleNamespace:
    for name in ("speculators", "speculators.data_generation", "speculators.train"):
        stub(name)
    stub("speculators.data_generation.offline", check_hidden_states=unused)
    stub("speculators.data_generation.vllm_client", DEFAULT_MAX_RETRIES=0,
         DEFAULT_REQUEST_TIMEOUT=0.0, ClientItem=dict, generate_hidden_states=unused)
    stub("speculators.train.noise_transforms", TransformTensors=object)
    stub("hs_connectors.mooncake_store", MooncakeHiddenStatesStore=object, MooncakeStoreConfig=object)
    fp8 = vendored("hs_connectors.fp8_utils", "fp8_utils.py")
    transfer = vendored("hs_connectors.transfer", "transfer.py")
    stub("hs_connectors", FileTransfer=transfer.FileTransfer,
         HiddenStatesTransfer=transfer.HiddenStatesTransfer, FP8Transfer=transfer.FP8Transfer)
    data = vendored("speculators.train.data", "data.py")
    vocab = vendored("speculators.train.vocab_mapping", "vocab_mapping.py")
    return types.SimpleNamespace(data=data, transfer=transfer, fp8_utils=fp8, vocab_mapping=vocab)
