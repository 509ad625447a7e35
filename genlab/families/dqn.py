"""DQN for the robot mouse, trained by the shared trainer.

The agent fits the data-driven loop like this: the `maze` data source lists mazes (val/test:
held-out maze seeds), but training experience comes from the family's own `BatchedMaze`.
Every trainer step is one `training_step`:

    1. act `env_steps_per_update` times in all `num_envs` mazes, epsilon-greedy; epsilon falls
       linearly from eps_start to eps_end over the first `exploration_fraction` of train.steps;
    2. turn the steps into n-step transitions (s, a, R, gamma^m or 0, s') in the replay buffer
       (genlab.envs.replay: the n-step maths across episode ends, bit-packed observations);
    3. once `learning_starts` transitions are stored: one TD update on a uniform minibatch of
       train.batch_size, Huber loss, through ctx.update (the trainer clips the gradient norm to
       train.grad_clip); Double DQN picks a' with the online net and scores it with the target;
    4. every `target_update_every` steps: target <- tau * online + (1 - tau) * target
       (tau = 1: a hard copy).
The index batch the trainer samples from the data source is not used for training (the family
sets `uses_train_batches = False`, so the trainer does not even build it). The Q-network is
genlab.nn.qnet; `export_qnet` hands it on as a weight bundle.

State: everything that makes the next step what it is lives in the module's state_dict, so the
trainer's checkpoint/resume continues exactly - the online and target nets, the replay buffer
(contents, position, size), the n-step window of the last n steps, the envs' state (mazes, mouse,
counters, seed streams; `EnvState`), recent episode statistics and epsilon (a function of the
step, stored too). Randomness (epsilon-greedy, minibatch indices) comes from torch's global RNG,
which the trainer seeds and checkpoints. Under data parallelism each process plays its own
environments (`set_rank`).

Evaluation: greedy episodes on the batch's maze seeds (held out), one per maze, scored against
the exact optimum (genlab.envs.solver): optimal_ratio = return / optimal (clipped at 1; a maze
whose optimum is <= 0 counts 1 when the agent matches the optimum and 0 otherwise - never the
case with the default rewards, where eating the food always pays).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from genlab.core.errors import RecipeError
from genlab.core.registry import register_family
from genlab.core.schema import param
from genlab.data.base import DataInfo
from genlab.data.sampler import derive_seed
from genlab.envs.batched import BatchedMaze
from genlab.envs.maze import Layout
from genlab.envs.replay import EnvState, Replay, pack_obs, td_target
from genlab.envs.rollout import greedy_episode, greedy_play
from genlab.families.base import Family, StepContext
from genlab.nn.optim import build_optimizer
from genlab.nn.qnet import QNet, QNetConfig, save_qnet
from genlab.viz.maze import frame_strip, q_heatmap, q_map, qnet_filters, qnet_maps, start_observation

_STATS = 100  # finished training episodes kept for charts/episodic_return



@dataclass
class DQNConfig:
    # -- network
    arch: Literal["conv", "mlp", "plan"] = param(
        "conv", help="conv: 3x3 same-size convs then an MLP; mlp: MLP on the flat maze; plan: a learned "
                     "value-iteration module read out around the mouse (see PlanTrunk)")
    channels: list[int] = param(default_factory=lambda: [32, 32], ge=1,
                                help="conv widths, one 3x3 stride-1 layer each (arch: conv, plan)")
    plan_iters: int = param(20, ge=1, help="value-iteration sweeps (arch: plan); >= the longest path to food "
                            "(9x9 mazes: up to 26 steps; fewer leave V flat far from food)")
    plan_moves: Literal["grid", "learned"] = param(
        "grid", help="planning transitions (arch: plan): grid = the 4 moves and stay, each reading one "
                     "neighbour's value (the maze is a 4-connected grid); learned = plan_actions "
                     "softmax 3x3 kernels, as in Value Iteration Networks")
    plan_actions: int = param(8, ge=1, help="internal actions of the planning module (arch: plan, "
                                            "plan_moves: learned; grid has 5)")
    hidden: list[int] = param(default_factory=lambda: [256], ge=1, help="hidden widths of the MLP head")
    crop_border: bool = param(True, help="skip the outer wall ring (every layout's border is wall): the "
                              "first conv is unpadded (9x9 -> 7x7 maps), the MLP sees the interior only")
    dueling: bool = param(True, help="dueling head: Q = V + A - mean(A)")
    double: bool = param(True, help="Double DQN: the online net picks a', the target net scores it")
    # -- acting
    num_envs: int = param(32, ge=1, help="mazes stepped in parallel (BatchedMaze)")
    env_steps_per_update: int = param(1, ge=1, help="env steps (of all num_envs mazes) per TD update")
    eps_start: float = param(1.0, ge=0, le=1, help="epsilon of epsilon-greedy at step 0")
    eps_end: float = param(0.05, ge=0, le=1, help="epsilon floor")
    exploration_fraction: float = param(0.3, gt=0, le=1,
                                        help="fraction of train.steps over which epsilon falls to eps_end")
    explore_repeat: int = param(1, ge=1, help="ez-greedy (Dabney et al. 2020): an exploratory action is "
                                "repeated n ~ zeta(2) times, n <= this (runs down corridors, turns "
                                "around); 1 = plain epsilon-greedy")
    # -- learning
    buffer_size: int = param(100_000, ge=1, help="replay capacity in transitions (kept on the device)")
    learning_starts: int = param(5_000, ge=0, help="transitions stored before the first TD update")
    gamma: float = param(0.99, gt=0, le=1, help="discount factor")
    n_step: int = param(3, ge=1, help="n of the n-step return (1 = plain one-step TD)")
    target_update_every: int = param(250, ge=1, help="training steps between target-network updates")
    tau: float = param(1.0, gt=0, le=1, help="target update: target <- tau*online + (1-tau)*target "
                                             "(1 = hard copy)")
    huber_delta: float = param(1.0, gt=0, help="Huber loss threshold (smooth L1 beyond it)")

    def __post_init__(self):
        if self.eps_end > self.eps_start:
            raise ValueError(f"eps_end ({self.eps_end}) must not exceed eps_start ({self.eps_start})")
        if self.arch == "conv" and not self.channels:
            raise ValueError("channels: a conv Q-network needs at least one layer")


@register_family("dqn")
class DQN(Family):
    """Deep Q-network for the mouse maze: Double DQN, dueling head, n-step returns, replay on
    the device."""
    capabilities = frozenset({"act"})

    Config = DQNConfig
    monitor = ("charts/optimal_ratio", "max")
    uses_train_batches = False  # experience comes from the envs, not the data source

    def __init__(self, cfg: DQNConfig, info: DataInfo):
        super().__init__()
        if info.env is None or not hasattr(info.env, "layout_of"):
            raise RecipeError("data.name", f"family 'dqn' needs an environment data source "
                                           f"(data.name: maze), got {info.name!r}")
        self.cfg, self.info, self.task = cfg, info, info.env
        self.q = QNet(info.input_shape, QNetConfig.of(cfg))
        self.target = copy.deepcopy(self.q).requires_grad_(False)
        grid = tuple(info.input_shape[1:])
        self.replay = Replay(cfg.buffer_size, grid, cfg.num_envs, cfg.n_step, cfg.gamma)
        pool = self.task.train_pool()
        self.envs = EnvState(lambda dev: BatchedMaze(cfg.num_envs, self.task.config, dev, layouts=pool,
                                                     order="hash", obs_dtype=torch.uint8),
                             self._env_seeds(rank=0))
        self.register_buffer("epsilon", torch.tensor(float(cfg.eps_start)))
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))  # transitions taken
        self.register_buffer("ep_returns", torch.zeros(_STATS))
        self.register_buffer("ep_lengths", torch.zeros(_STATS))
        self.register_buffer("ep_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("explore_action", torch.zeros(cfg.num_envs, dtype=torch.long))
        self.register_buffer("explore_left", torch.zeros(cfg.num_envs, dtype=torch.long))
        p = 1.0 / torch.arange(1, cfg.explore_repeat + 1, dtype=torch.float64) ** 2
        self.register_buffer("_zeta_cdf", (p.cumsum(0) / p.sum()).float()[:-1], persistent=False)
        self.env_steps_per_step = cfg.num_envs * cfg.env_steps_per_update  # the trainer's charts/SPS
        self._decay_steps, self._batch_size = 1.0, 32  # set from train.* in configure_optimizers

    def _env_seeds(self, rank: int) -> torch.Tensor:
        """Episode seeds of this process's training envs: env numbers rank*n .. rank*n + n-1."""
        first = rank * self.cfg.num_envs
        return torch.tensor([derive_seed(self.task.seed, "dqn-train-env", i)
                             for i in range(first, first + self.cfg.num_envs)])

    def set_rank(self, rank: int, world_size: int) -> None:
        """Data parallelism: each process plays its own environments (rank r: env numbers
        r*num_envs ..); rank 0's are those of a single process."""
        if rank:
            self.envs.reseed(self._env_seeds(rank))

    # -- the contract ------------------------------------------------------------------------
    def configure_optimizers(self, train):
        """The online net's optimizer; also the recipe checks that need train.* (see guards)."""
        self.check_recipe(train)
        self._decay_steps = max(1.0, self.cfg.exploration_fraction * train.steps)
        self._batch_size = train.batch_size
        opt = build_optimizer(self.q.parameters(), train)
        # TD updates begin only after learning_starts, while the trainer steps the lr schedule
        # from step 1 (warm-up counts trainer steps): mark the optimizer as used so torch does
        # not warn that scheduler.step() came before optimizer.step().
        opt._opt_called = True
        return {"main": opt}

    def check_recipe(self, train) -> None:
        """Guards against DQN's classic silent failures (errors stop before a run folder exists)."""
        cfg = self.cfg
        if cfg.buffer_size < train.batch_size:
            raise RecipeError("model.buffer_size", f"the replay buffer ({cfg.buffer_size} transitions) "
                                                   f"is smaller than one minibatch (train.batch_size "
                                                   f"{train.batch_size})")
        per_step = cfg.num_envs * cfg.env_steps_per_update
        budget = train.steps * per_step
        start = self.learning_start(train.batch_size)
        if start > budget - per_step:
            warnings.warn(f"model.learning_starts: learning starts after {start} transitions, but "
                          f"the run collects only {budget} (train.steps {train.steps} x num_envs "
                          f"{cfg.num_envs} x env_steps_per_update {cfg.env_steps_per_update}): "
                          f"no TD update will happen", UserWarning, stacklevel=2)
        floor_at = cfg.exploration_fraction * train.steps * per_step
        if floor_at <= start and cfg.eps_end < cfg.eps_start:
            warnings.warn(f"model.exploration_fraction: epsilon reaches its floor {cfg.eps_end} after "
                          f"{floor_at:.0f} transitions, before learning starts at {start}: the "
                          f"network acts greedily before it has learned anything", UserWarning,
                          stacklevel=2)

    def learning_start(self, batch_size: int) -> int:
        """Transitions stored before TD updates begin (at least one minibatch)."""
        return max(self.cfg.learning_starts, batch_size)

    def epsilon_at(self, step: int) -> float:
        cfg = self.cfg
        frac = min(1.0, step / self._decay_steps)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, epsilon: float) -> torch.Tensor:
        """epsilon-greedy actions (N,) for observations (N, 8, H, W) (global torch RNG).

        ez-greedy (explore_repeat > 1): an env not already exploring starts, with probability
        epsilon, a random action held for n ~ zeta(2) steps (P(n) ~ 1/n^2, n <= explore_repeat);
        `explore_action`/`explore_left` carry the ongoing repeats from step to step."""
        greedy = self.q(obs.float()).argmax(1)
        if epsilon <= 0:
            return greedy
        n, dev = obs.shape[0], obs.device
        busy = self.explore_left > 0
        start = ~busy & (torch.rand(n, device=dev) < epsilon)
        rand_a = torch.randint(3, (n,), device=dev)
        if self.cfg.explore_repeat == 1:
            return torch.where(start, rand_a, greedy)
        dur = torch.searchsorted(self._zeta_cdf, torch.rand(n, device=dev)) + 1  # 1..explore_repeat
        self.explore_action.copy_(torch.where(start, rand_a, self.explore_action))
        self.explore_left.copy_(torch.where(start, dur, self.explore_left) - (busy | start).long())
        return torch.where(busy | start, self.explore_action, greedy)

    def _collect(self, epsilon: float) -> None:
        env = self.envs.env
        for _ in range(self.cfg.env_steps_per_update):
            obs = env._obs.view(env.num_envs, *env.obs_shape)  # the current observation (uint8)
            packed = pack_obs(obs)
            action = self.act(obs, epsilon)
            _, reward, term, trunc, info = env.step(action)
            done = term | trunc
            self.replay.push_step(packed, action, reward, term, done, pack_obs(info["final_obs"]))
            self.env_steps += env.num_envs
            k = int(done.sum())
            if k:
                self._record_episodes(info["episode_return"][done], info["steps"][done].float())

    def _record_episodes(self, returns: torch.Tensor, lengths: torch.Tensor) -> None:
        k = min(len(returns), _STATS)
        idx = (int(self.ep_count) + torch.arange(k, device=returns.device)) % _STATS
        self.ep_returns[idx], self.ep_lengths[idx] = returns[-k:], lengths[-k:]
        self.ep_count += len(returns)

    def training_step(self, batch, ctx: StepContext):
        cfg = self.cfg
        eps = self.epsilon_at(ctx.step)
        self.epsilon.fill_(eps)
        self._collect(eps)
        zero = torch.zeros((), device=self.epsilon.device)
        loss, q_mean = zero, zero
        batch_size = self._batch_size
        if len(self.replay) >= self.learning_start(batch_size):
            s, a, ret, discount, s2 = self.replay.sample(batch_size)
            y = td_target(ret, discount, s2, self.q, self.target, cfg.double)
            with ctx.autocast():
                q = self.q(s).float().gather(1, a[:, None]).squeeze(1)
            loss = F.huber_loss(q, y, delta=cfg.huber_delta)
            ctx.update("main", loss)
            loss, q_mean = loss.detach(), q.detach().mean()
            if (ctx.step + 1) % cfg.target_update_every == 0:
                self.update_target()
        n = min(int(self.ep_count), _STATS)
        mean_ret = self.ep_returns[:n].mean() if n else zero
        mean_len = self.ep_lengths[:n].mean() if n else zero
        return {"losses/td_loss": loss, "losses/q_values": q_mean,
                "charts/epsilon": self.epsilon.clone(),
                "charts/episodic_return": mean_ret, "charts/episodic_length": mean_len}

    @torch.no_grad()
    def update_target(self) -> None:
        tau = self.cfg.tau
        for pt, po in zip(self.target.parameters(), self.q.parameters()):
            if tau >= 1.0:
                pt.copy_(po)
            else:
                pt.lerp_(po, tau)

    # -- evaluation --------------------------------------------------------------------------
    def play(self, layouts: list[Layout]) -> dict[str, torch.Tensor]:
        """One greedy episode in each maze; (B,) return, success (all food eaten), shocks, steps."""
        return greedy_play(self.q, self.task.config, layouts, self.epsilon.device)

    @torch.no_grad()
    def evaluate(self, batch):
        seeds = batch["seed"].tolist()
        res = self.play([self.task.layout_of(s) for s in seeds])
        res["optimal"] = torch.tensor([self.task.optimal(s) for s in seeds],
                                      device=res["return"].device)
        return res

    def summarize(self, c: dict[str, torch.Tensor]) -> dict[str, float]:
        ret, opt = c["return"].double(), c["optimal"].double()
        ratio = torch.where(opt > 0, ret / opt.clamp_min(1e-12), (ret >= opt - 1e-6).double())
        # "charts/episodic_return" is the training episodes' (CleanRL's meaning); the greedy
        # held-out return is logged as eval/episodic_return
        return {"episodic_return": ret.mean().item(),
                "optimal_return": opt.mean().item(),
                "episode_length": c["steps"].double().mean().item(),
                "charts/optimal_ratio": ratio.clamp(max=1.0).mean().item(),
                "charts/success_rate": c["success"].double().mean().item(),
                "charts/shocks_per_episode": c["shocks"].double().mean().item()}

    # -- renders -----------------------------------------------------------------------------
    def episode(self, layout: Layout, cell_px: int = 8) -> dict:
        """One greedy episode in `layout`, frame by frame (see genlab.envs.rollout.greedy_episode)."""
        return greedy_episode(self.q, self.task.config, layout, self.epsilon.device, cell_px)

    def q_map(self, layout: Layout) -> torch.Tensor:
        """(4, H, W) max_a Q per floor cell and heading (see genlab.viz.maze.q_map)."""
        return q_map(self.q, layout, self.epsilon.device)

    @torch.no_grad()
    def renders(self, batch):
        """One fixed maze (the first of the batch: the same val maze at every render): a greedy
        episode, the max-Q heat map, and the first layer's filters and activations on it."""
        layout = self.task.layout_of(int(batch["seed"][0]))
        obs = start_observation(layout, self.epsilon.device, self.task.config)
        kernels, channels, acts = self.q.first_layer(obs)
        return {"episode": frame_strip(self.episode(layout)["rgb"]),
                "q_heatmap": q_heatmap(self.q_map(layout), layout),
                "filters": qnet_filters(kernels, channels),
                "feature_maps": qnet_maps(acts)}

    @torch.no_grad()
    def histograms(self, batch):
        return {"q_values": self.q(batch["x"][:64].float())}

    # -- export ------------------------------------------------------------------------------
    def export_qnet(self, out_dir: Path) -> Path:
        """The online Q-network as out_dir/qnet.safetensors + qnet.json (a weight bundle; reload
        with genlab.nn.qnet.load_qnet). Returns the JSON's path."""
        return save_qnet(self.q, self.info.input_shape, QNetConfig.of(self.cfg), out_dir,
                         {"family": "dqn", "data": self.info.name,
                          "env": dataclasses.asdict(self.task.config)})
