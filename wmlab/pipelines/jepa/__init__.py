"""The JEPA planner experiments on two rooms: the pipeline, the value landscape and the JEPA-vs-RSSM comparison."""
