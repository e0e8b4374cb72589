"""The eqlosses lab: long-tailed comparisons and the benchmark, built on the public API of
:mod:`eqlosses` (data sets, models, metrics, tasks, reports and their commands)."""
