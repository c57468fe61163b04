"""Checkpoint layouts, each in its own module, behind `groupvit.checkpoint`'s read and save dispatcher."""
