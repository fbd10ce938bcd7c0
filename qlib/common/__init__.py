"""Shared helpers at the bottom of qlib: argument checks, atomic file writes, and this CPU's model, ISA features and
class. They import nothing else from qlib.
"""
