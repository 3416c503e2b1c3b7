"""The `starfish` command: argv → the stage's Hydra app."""
