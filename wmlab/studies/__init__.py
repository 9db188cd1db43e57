"""Studies of open problems of world-model agents, each one command with its figure and its
measured comparison (docs/studies.md):

- `wmlab study horizon`: horizon-aware policy optimisation (wmlab.studies.horizon);
- `wmlab study counterfactual`: counterfactual augmentation of imagination starts and robustness
  to perturbations (wmlab.studies.counterfactual);
- `wmlab study occlusion`: partial observability, returns and the belief state's error under
  occlusion (wmlab.studies.occlusion).

Each trains the compared Dreamer variants with the generic Trainer on the same seeds
(wmlab.studies.runner) and writes OUT/NAME.json, OUT/NAME.png and OUT/NAME.md.
"""

#: study name -> "module:function(argv) -> exit code", for `wmlab study NAME`.
STUDIES = {
    "horizon": "wmlab.studies.horizon:run",
    "counterfactual": "wmlab.studies.counterfactual:run",
    "occlusion": "wmlab.studies.occlusion:run",
}
