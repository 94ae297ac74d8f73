"""tokenkeep agents: PPO set-up on stable-baselines3, training callbacks, heuristic baseline reducers."""
