"""The bottom layer of ttsvar: what every other package builds on and nothing of ours is imported by.

* `errors`: the error root (`TtsvarError` -> `InputError` -> `ConfigError`, ...) and `is_transient`;
* `generator`: the step-wise `Generator` interface and its state types (`Rows`, `GenState`, `SamplingConfig`);
* `options`: component options checked against the constructor that takes them (`check_options`);
* `checkpoint`: strict, safe weight loading (`read_state_dict`, `load_strict`, `load_parts` for files holding
  several modules under key prefixes, `CheckpointError`);
* `device`: `model.device` / `model.dtype` strings -> torch objects.

Modules here import only the standard library, numpy, torch and safetensors (`tests/test_layering.py`
checks it). This file imports nothing, so `from ttsvar.core.errors import ...` does not load torch.
"""
