"""Building blocks only: MLPs, conv encoders/decoders, recurrent cells, norms, distributions."""
