"""DQN: one-step (or n-step) Q-learning with a target network, Mnih et al. (2013, 2015).

The target is y = R + discount * value(s'), with value(s') = max_a Q_target(s', a), or with Double DQN
(van Hasselt et al. 2016) Q_target(s', argmax_a Q_online(s', a)); the loss is the Huber loss (the
original's smooth L1) or the squared error of y - Q(s, a), and the priority source of prioritized
replay (Schaul et al. 2016) is that TD error. The maths per transition is in `jaxdqn.losses`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxdqn import losses
from jaxdqn.learners.base import Learner


@dataclasses.dataclass(frozen=True)
class DQN(Learner):
    """Q-learning on a Q-network (`outputs` are `[num_actions]` Q-values); `loss` is "huber" or "mse"."""

    loss: str = "huber"

    name: ClassVar[str] = "dqn"
    config_fields: ClassVar[tuple[str, ...]] = ("double", "loss")

    def transition_loss(self, outputs, action, reward, discount, next_target, next_online):
        target = losses.bootstrap_target(reward, discount, next_target, next_online)
        error = losses.td_error(outputs, action, target)
        return losses.td_loss(error, self.loss), error
