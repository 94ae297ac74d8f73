"""tokenkeep policies: the token-level policy network, its SB3 wrapper, and the deployable TokenReducer."""
