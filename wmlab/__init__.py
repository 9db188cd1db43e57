"""wmlab: world models, from Dyna to video simulators, behind one interface.

Importing the package is cheap on purpose: submodules (and heavy optional dependencies such as
dm_control, ale-py or ray) load only when used.
"""

__version__ = "0.1.0"
