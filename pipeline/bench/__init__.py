"""Benchmarks, each a command that runs its baseline side by side and prints the ratio:

- ``python -m pipeline.bench`` (:mod:`pipeline.bench.plans`): every gradient plan's step time and memory, and
  the engine against a naive loop;
- ``python -m pipeline.bench.distill``: Diff-Instruct* and its baselines on the toy world;
- ``python -m pipeline.bench.reward_actors``: a step with the reward in-process against reward actors;
- ``python -m pipeline.bench.cost``: the cost model's FLOPs and memory against a real step's.
"""
