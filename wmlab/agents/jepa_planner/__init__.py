"""Planning toward a goal in the representation space of a JEPA world model (distance- or value-guided)."""
