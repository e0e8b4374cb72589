"""Adapters that plug the losses into training frameworks.

Each submodule imports its framework and is imported on its own, e.g. through an
mmdetection config's ``custom_imports``; ``import eqlosses`` imports none of them.

* :mod:`eqlosses.integrations.mmdet`: the losses as mmdetection 3 classification losses,
  with one statistics update per training step.
"""
