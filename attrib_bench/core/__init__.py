"""The foundation: what every other layer may use, and which imports none of them.

``errors`` (the exceptions users catch), ``checks`` (input validation: one clear line),
``hparams`` (typed settings and their constraints), ``registry`` (models, methods, metrics and
datasets by name; plugins), ``checkpoints`` (safe, sha256-checked weights), ``evaluation``
(devices, IEEE float32 on GPUs, eval mode, hooks), ``backward`` (per-target gradients),
``hashing`` (counter-based noise), ``provenance`` (hardware, code version), ``perf`` (CPU
switches). The layers are written down in ``pyproject.toml`` (``[tool.importlinter]``) and in
``docs/contributing.md``.
"""
