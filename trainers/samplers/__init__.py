"""Samplers: the :class:`~trainers.samplers.schedule.Schedule` the engine walks, and how each model kind builds
one (DDIM for ε/v-prediction models, Euler for flow models). They import nothing else of the project."""
