"""QGF core: flow policies, critics, guided sampling, OGBench data, training and evaluation.

Never imports a GUI: everything here runs headless (scripts, tests, cluster jobs).
"""

__version__ = "0.1.0"
