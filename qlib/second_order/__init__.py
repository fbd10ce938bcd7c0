"""Second order: Hessian-vector products and power iteration (PyHessian's method), Q-BERT's per-layer sensitivity and
bit assignment. It imports the layers below it, never ``qlib.deploy``.
"""
