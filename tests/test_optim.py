"""The shared optimiser settings (wmlab.core.optim) and the reading of older configs whose flat
optimiser settings moved into them."""

from __future__ import annotations

import pytest
import torch

from wmlab.agents.diamond.config import DiamondConfig, DiamondCPUConfig
from wmlab.agents.imagination.config import ImaginationConfig
from wmlab.agents.iris.config import IrisCPUConfig
from wmlab.core.config import from_dict
from wmlab.core.optim import OptimizerConfig, clipped_step, make_module_optimizer, make_optimizer


def test_a_diamond_config_json_written_before_the_optimizer_settings_moved_still_loads():
    old = {
        "denoiser_learning_rate": 2e-4,
        "reward_end_learning_rate": 5e-4,
        "weight_decay": 0.05,
        "adam_epsilon": 1e-6,
        "warmup_updates": 7,
        "denoiser_grad_clip": 2.0,
        "reward_end_grad_clip": 50.0,
        "learner": {"learning_rate": 3e-3, "adam_epsilon": 1e-5, "warmup_updates": 0, "grad_clip": 10.0},
        "actor_critic_starts": 3,
    }
    config = from_dict(DiamondCPUConfig, old)
    assert config.denoiser_optimizer == OptimizerConfig(
        learning_rate=2e-4, epsilon=1e-6, weight_decay=0.05, grad_clip=2.0, warmup=7
    )
    assert config.reward_end_optimizer == OptimizerConfig(
        learning_rate=5e-4, epsilon=1e-6, weight_decay=0.05, grad_clip=50.0, warmup=7
    )
    assert config.learner.optimizer == OptimizerConfig(learning_rate=3e-3, epsilon=1e-5, grad_clip=10.0)
    # what the old file did not name keeps the preset's value
    assert config.model == DiamondCPUConfig().model
    assert config.actor_critic_starts == 3


def test_an_iris_config_json_with_one_grad_clip_sets_both_optimizers():
    config = from_dict(IrisCPUConfig, {"grad_clip": 4.0, "world_model_weight_decay": 0.2})
    assert config.tokenizer_optimizer.grad_clip == config.world_model_optimizer.grad_clip == 4.0
    assert config.world_model_optimizer.weight_decay == 0.2
    assert config.tokenizer_optimizer.learning_rate == IrisCPUConfig().tokenizer_optimizer.learning_rate


def test_a_current_config_round_trips_and_unknown_settings_are_still_named():
    import dataclasses

    for config in (DiamondConfig(), DiamondCPUConfig(), IrisCPUConfig(), ImaginationConfig()):
        assert from_dict(type(config), dataclasses.asdict(config)) == config
    with pytest.raises(ValueError, match="denoiser_learning_rat"):
        from_dict(DiamondConfig, {"denoiser_learning_rat": 1e-3})


def test_the_clipped_step_is_torchs_clip_and_adam_step_and_warms_up_linearly():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(weight.detach().clone()) for weight in weights]
    config = OptimizerConfig(learning_rate=0.1, grad_clip=0.5, warmup=4)
    ours, theirs = make_optimizer(weights, config), torch.optim.Adam(twins, lr=0.1)
    for update in range(3):
        gradients = [torch.randn_like(weight) * 3 for weight in weights]
        for weight, twin, gradient in zip(weights, twins, gradients):
            weight.grad, twin.grad = gradient.clone(), gradient.clone()
        norm = clipped_step(ours, weights, config, update)
        for group in theirs.param_groups:
            group["lr"] = 0.1 * (update + 1) / 4
        assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(twins, 0.5))
        theirs.step()
        assert ours.param_groups[0]["lr"] == pytest.approx(0.1 * (update + 1) / 4)
        for weight, twin in zip(weights, twins):
            assert torch.equal(weight, twin)


def test_an_unknown_optimizer_kind_is_refused():
    with pytest.raises(ValueError, match="adam or laprop"):
        OptimizerConfig(kind="sgd")


def test_decay_weights_spares_biases_norms_and_embeddings_as_diamonds_configure_opt():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Embedding(3, 4), torch.nn.LSTMCell(4, 4)
    )
    decayed = {"0.weight", "3.weight_ih", "3.weight_hh"}
    config = OptimizerConfig(learning_rate=0.1, weight_decay=0.5, decay="weights")
    optimizer = make_module_optimizer(module, config)
    before = {name: parameter.detach().clone() for name, parameter in module.named_parameters()}
    for parameter in module.parameters():
        parameter.grad = torch.zeros_like(parameter)  # AdamW's step is then the decay alone
    optimizer.step()
    for name, parameter in module.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if name in decayed else before[name]
        torch.testing.assert_close(parameter.detach(), expected, msg=name)
    # "all" decays every parameter, as before this setting existed
    optimizer = make_module_optimizer(module, OptimizerConfig(learning_rate=0.1, weight_decay=0.5))
    assert [len(group["params"]) for group in optimizer.param_groups] == [len(list(module.parameters()))]
    with pytest.raises(ValueError, match="decay must be all or weights"):
        OptimizerConfig(decay="biases")


def test_diamonds_paper_preset_decays_weights_only_and_the_cpu_preset_everything():
    assert DiamondConfig().denoiser_optimizer.decay == DiamondConfig().reward_end_optimizer.decay == "weights"
    assert DiamondCPUConfig().denoiser_optimizer.decay == DiamondCPUConfig().reward_end_optimizer.decay == "all"
    older = from_dict(DiamondConfig, {"denoiser_optimizer": {"learning_rate": 1e-4}})
    assert older.denoiser_optimizer.decay == "all"  # a config.json from before the setting
