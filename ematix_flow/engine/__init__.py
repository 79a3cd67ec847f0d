"""Task execution shared by workers and the submitter's root stage: splice inputs, run, write outputs."""
