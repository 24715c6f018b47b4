"""What methods may use from the run besides models and rollout: the config dataclasses,
processes and devices (`distributed`), clean stops (`signals`) and the update engine."""
