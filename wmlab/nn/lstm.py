"""DIAMOND's initialisation of an LSTM (its utils.init_lstm), for its reward / end model and its
actor-critic: input weights Xavier-uniform, recurrent weights orthogonal, biases zero but the
forget gate's input bias, 1 (so the cell keeps its memory at the start of training)."""

from __future__ import annotations

from torch import nn


def diamond_lstm_init(lstm: nn.LSTM | nn.LSTMCell) -> None:
    """Initialise `lstm` in place as DIAMOND does; torch's gate order is input, forget, cell, output."""
    for name, parameter in lstm.named_parameters():
        if "weight_ih" in name:
            nn.init.xavier_uniform_(parameter.data)
        elif "weight_hh" in name:
            nn.init.orthogonal_(parameter.data)
        elif "bias" in name:
            parameter.data.zero_()
            if "bias_ih" in name:
                size = parameter.shape[0] // 4
                parameter.data[size : 2 * size] = 1.0
