"""The World Models (V-M-C) pipeline: V, M and C trained in turn, C by CMA-ES in the dream or in reality."""
