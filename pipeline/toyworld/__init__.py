"""Shapes world: a procedural text-to-image toy domain, a tiny SD pipeline and a tiny CLIP reward trained on it.

``shapes`` draws 32x32 images of one coloured shape on a plain background with captions such as
"a red circle on a gray background". ``build_base`` pretrains a tiny Stable-Diffusion-structured
pipeline on it, ``build_reward`` a tiny open_clip model for the ``clip_score`` reward, and ``report``
measures how well the base model follows its prompts. The shipped results live in
``pipeline/assets/toyworld/``.
"""
