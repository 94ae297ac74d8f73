"""tokenkeep environments: the frozen-model wrapper, task suites, rewards and the TokenKeep-v0 env.

Importing this package registers ``tokenkeep/TokenKeep-v0`` with gymnasium::

    import gymnasium as gym
    import envs  # noqa: F401
    env = gym.make("tokenkeep/TokenKeep-v0", model=lm, tasks="passkey:train", max_len=256, token_cost=0.5)
"""

import gymnasium as gym

gym.register(
    id="tokenkeep/TokenKeep-v0",
    entry_point="envs.token_keep_env:TokenKeepEnv",
)
