"""policy: the return of a policy as a landscape — batched environments (this file's
re-exports), each a stateless torch port of a Gymnasium environment that agrees with
Gymnasium's own ``reset(seed=s)`` and ``step`` (float64, to ~1e-16 a step), batched
over any leading dimensions (many weight points × many episodes at once) and
differentiable wherever the physics is; the return objective is built on top of them.
It reads the evaluation core (:mod:`basinscope.objective`) and the ground files only;
Gymnasium itself is needed by the tests alone.
"""

from ._cartpole import CartPole as CartPole
from ._cartpole import CartPoleParams as CartPoleParams
from ._envs import BatchedEnv as BatchedEnv
from ._pendulum import Pendulum as Pendulum
from ._pendulum import PendulumParams as PendulumParams
from ._pendulum import angle_normalize as angle_normalize
