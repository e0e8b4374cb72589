"""The comparison tasks (classification, segmentation, detection), the loop that runs
their (loss, seed) runs, and the ``eqlosses compare`` command."""
