"""What a run tells afterwards: result records, terminal summary, JSON report, JUnit properties, images,
the HTML report (html.py; its pictures, drawn where the analysis ran, in html_images.py), and the
header's "tf.keras is" line carried from pytest-xdist workers to the controller (keras_line.py).

May import: engine (the workbench's settings), checks, config, base.
"""
