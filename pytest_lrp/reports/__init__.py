"""What a run tells afterwards: result records, terminal summary, JSON report, JUnit properties, images.

May import: engine (the workbench's settings), checks, config, base.
"""
