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
from ._engine import RolloutEngine as RolloutEngine
from ._envs import BatchedEnv as BatchedEnv
from ._lqr import LQR as LQR
from ._lqr import lqr_return as lqr_return
from ._objective import episode_returns as episode_returns
from ._objective import return_objective as return_objective
from ._objective import return_stats as return_stats
from ._pendulum import Pendulum as Pendulum
from ._pendulum import PendulumParams as PendulumParams
from ._pendulum import angle_normalize as angle_normalize
from ._rollout import Rollout as Rollout
from ._train import PolicyRun as PolicyRun
from ._train import default_value as default_value
from ._train import train_policy as train_policy
