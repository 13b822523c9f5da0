"""What keys a model's cache entries (:func:`model_identity`): everything a run can see that
decides the output, so that two models share maps or pool logits only when they are the same
model (round-3 case ``cache_same_weights_other_forward.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.runners.benchmark import run
from attrib_bench.runners.cache import PoolLogits, model_digest, model_identity


class View(nn.Module):
    """The case's wrapper: the same weights, mirrored or not (a plain attribute)."""

    def __init__(self, net: nn.Module, mirror: bool) -> None:
        super().__init__()
        self.net, self.mirror = net, mirror

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(-1) if self.mirror else x)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


def _class(body: str) -> type:
    """A module class named ``Head`` (same module and qualified name each time) whose
    forward is ``body``: two classes a name cannot tell apart."""
    namespace: dict = {"nn": nn, "torch": torch}
    exec(textwrap.dedent(f'''
        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 10)

            def forward(self, x):
                """The docstring does not count."""
                return {body}
    '''), namespace)
    return namespace["Head"]


def test_same_weights_other_forward_never_share_maps(signal_set):
    """Two models in one run with one class and one state dict but another forward: each
    gets its own maps, as when it runs alone (the case: max difference 11.92, silently)."""
    net = small_cnn()
    kw = dict(methods="grad", metrics="pixel-removal", n_samples=3, progress=False,
              dataset=signal_set(20, 16), settings=["pixel-removal.steps=4"])
    both = run({"plain": View(net, False), "mirrored": View(net, True)}, **kw)
    key = ["sample", "variant", "stat", "removed"]
    for name, mirror in (("plain", False), ("mirrored", True)):
        alone = run({name: View(net, mirror)}, **kw).sort_values(key).value.to_numpy()
        together = both[both.model == name].sort_values(key).value.to_numpy()
        np.testing.assert_array_equal(together, alone)
    plain = both[both.model == "plain"].sort_values(key).value.to_numpy()
    mirrored = both[both.model == "mirrored"].sort_values(key).value.to_numpy()
    assert np.abs(plain - mirrored).max() > 0  # the two forwards do differ on these images


def test_identity_sees_what_decides_the_output():
    net = small_cnn()
    base = model_identity(View(net, False), "m")
    assert model_identity(View(net, False), "m") == base
    assert model_digest(View(net, True)) == model_digest(View(net, False))  # weights alike
    assert model_identity(View(net, True), "m") != base  # a plain attribute
    assert model_identity(View(net, False), "other") != base  # the name it runs under
    assert model_identity(View(small_cnn(1), False), "m") != base  # the weights

    tensor_attr = View(net, False)
    tensor_attr.offset = torch.zeros(3)  # a tensor that is neither parameter nor buffer
    changed = View(net, False)
    changed.offset = torch.ones(3)
    assert model_identity(tensor_attr, "m") != model_identity(changed, "m")

    hidden = View(net, False)
    hidden.register_buffer("scale", torch.ones(1), persistent=False)  # not in the state dict
    other = View(net, False)
    other.register_buffer("scale", torch.full((1,), 2.0), persistent=False)
    assert model_digest(hidden) == model_digest(other)
    assert model_identity(hidden, "m") != model_identity(other, "m")

    hooked = View(net, False)
    hooked.register_forward_hook(lambda module, args, output: output * 2)
    assert model_identity(hooked, "m") != base


def test_identity_sees_the_forward_code_not_its_docstring():
    first, second = _class("self.fc(x)"), _class("self.fc(x).relu()")
    assert first.__qualname__ == second.__qualname__ and first.__module__ == second.__module__
    a, b = first(), second()
    b.load_state_dict(a.state_dict())
    assert model_digest(a) == model_digest(b)
    assert model_identity(a, "m") != model_identity(b, "m")
    again = _class("self.fc(x)")()
    again.load_state_dict(a.state_dict())
    assert model_identity(again, "m") == model_identity(a, "m")


def test_identity_is_stable_across_processes_and_forwards():
    """Set iteration order follows the string hash seed: the key must not."""
    here = str(Path(__file__).parent)
    code = (f"import torch, sys; sys.path.insert(0, {here!r}); "
            "from test_model_identity import *; m = View(small_cnn(), True); "
            "[m.register_buffer(k, torch.ones(1), persistent=False) for k in 'abcdefgh']; "
            "print(model_identity(m, 'm'))")
    model = View(small_cnn(), True)
    for key in "abcdefgh":  # a set of 8 names: its order differs between hash seeds
        model.register_buffer(key, torch.ones(1), persistent=False)
    here_seed = os.environ.get("PYTHONHASHSEED", "")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**os.environ, "PYTHONHASHSEED": "1" if here_seed
                                            != "1" else "2"}).stdout.strip()
    seen = {other, model_identity(model, "m")}  # another hash seed than this process's
    assert len(seen) == 1, seen
    model = View(small_cnn(), True)
    before = model_identity(model, "m")
    model(torch.rand(2, 3, 8, 8))
    assert model_identity(model, "m") == before


@pytest.mark.parametrize("mirror", [False, True])
def test_pool_logits_are_keyed_by_identity(signal_set, tmp_path, mirror):
    """The pool logits (sample selection) of two models with the same weights and another
    forward are two entries; each equals its own model's logits."""
    net = small_cnn()
    data = signal_set(12, 8)
    pool = PoolLogits(tmp_path, torch.device("cpu"), shipped=[])
    plain, view = View(net, False), View(net, mirror)
    first = pool.predict(plain, data)
    second = pool.predict(view, data)
    assert (pool.key(plain, data) == pool.key(view, data)) == (not mirror)
    with torch.no_grad():
        expected = view(data.float_images(torch.arange(12)))
    torch.testing.assert_close(second, expected)
    assert torch.equal(first, second) == (not mirror)


def _scaled(body: str) -> nn.Module:
    """A ``Scaled`` module (same qualified name each time) defined by ``body``."""
    namespace: dict = {"nn": nn, "torch": torch}
    exec(textwrap.dedent(body), namespace)
    torch.manual_seed(0)
    return namespace["Scaled"]()


@pytest.mark.parametrize(("first", "second"), [
    # a class attribute the forward reads
    ("class Scaled(nn.Module):\n FLIP = False\n def forward(self, x): return x",
     "class Scaled(nn.Module):\n FLIP = True\n def forward(self, x): return x"),
    # a default argument of forward
    ("class Scaled(nn.Module):\n def forward(self, x, flip=False): return x",
     "class Scaled(nn.Module):\n def forward(self, x, flip=True): return x"),
    # a mixin listed after nn.Module
    ("class Mix:\n def scale(self): return 1\n"
     "class Scaled(nn.Module, Mix):\n def forward(self, x): return x * self.scale()",
     "class Mix:\n def scale(self): return 2\n"
     "class Scaled(nn.Module, Mix):\n def forward(self, x): return x * self.scale()"),
])
def test_identity_sees_class_attributes_defaults_and_mixins(first, second):
    """Round-5 finds (a new user, after the first cut): each pair computes differently under
    one qualified name and one state dict."""
    assert model_identity(_scaled(first), "m") != model_identity(_scaled(second), "m")
    assert model_identity(_scaled(first), "m") == model_identity(_scaled(first), "m")


class _Slotted:
    __slots__ = ("k",)

    def __init__(self, k: int) -> None:
        self.k = k


class _Deep:
    def __init__(self, inner: object) -> None:
        self.inner = inner


def test_identity_sees_arrays_slots_and_nested_objects():
    import numpy as np

    def with_attribute(value: object) -> str:
        model = View(small_cnn(), False)
        model.extra = value
        return model_identity(model, "m")

    big = np.zeros(2000)
    changed = big.copy()
    changed[1000] = 1  # numpy's repr would elide the middle with "..."
    assert with_attribute(big) != with_attribute(changed)
    assert with_attribute(_Slotted(1)) != with_attribute(_Slotted(3))
    nested = [_Deep(_Deep(_Deep(_Deep(k)))) for k in (1, 3)]
    assert with_attribute(nested[0]) != with_attribute(nested[1])
