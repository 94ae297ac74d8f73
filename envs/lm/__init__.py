"""The frozen model: loading a spec, :class:`~envs.lm.frozen_lm.FrozenLM`, and the scoring backends behind it.

Specs: :mod:`envs.lm.model_cache`; backends: :mod:`envs.lm.backends` (in-process, or a server picked by the
spec's scheme). Nothing here imports :mod:`envs.tasks`: the model does not know the tasks, nor the tasks the model.
"""
