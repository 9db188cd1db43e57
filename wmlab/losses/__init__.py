"""Pure loss and return functions, each citing its equation."""
