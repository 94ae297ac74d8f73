"""The task data: examples, the synthetic and real-text families, JSONL files, and the specs that name them.

:mod:`envs.tasks.examples`, :mod:`envs.tasks.families` (one registry entry per family), :mod:`envs.tasks.real_text`,
:mod:`envs.tasks.jsonl`, :mod:`envs.tasks.specs`. Nothing here imports :mod:`envs.lm`: the tasks do not know the
model that answers them.
"""
