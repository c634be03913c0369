"""The interface every latent variable model implements, and shared building blocks.

A model is an ``nn.Module`` that hands out ``torch.distributions`` objects:

* ``prior()``         p(z)
* ``likelihood(z)``   p_theta(x | z)
* ``encoder(x)``      q_phi(z | x)
* ``log_marginal(x)`` exact log p(x), and ``posterior(x)`` exact p(z | x), where tractable.

Parameters are split into the decoder group theta (everything the generative model
uses) and the encoder group phi (the module ``self.encoder_net``), so gradient
estimators can treat them separately.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ClassVar, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (Bernoulli, Categorical, Distribution, Independent, MultivariateNormal, Normal,
                                 OneHotCategorical, TransformedDistribution, constraints, kl_divergence)

from lvmbench.noise import active as active_noise


@contextmanager
def fast_distributions() -> Iterator[None]:
    """Skip torch.distributions' argument and support validation inside hot loops.

    Validation roughly triples the cost of a VAE's log-weights on CPU; the models build
    valid parameters by construction, and the tests run with validation on.
    """
    old = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(old)


def gaussian_family(q: Distribution) -> str | None:
    """``"diagonal"`` for an Independent Normal over a vector, ``"full"`` for a
    MultivariateNormal, else None: the Gaussian families per-datapoint inference can take
    over from an encoder."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        return "diagonal"
    return "full" if isinstance(q, MultivariateNormal) else None


class BernoulliLogits(Bernoulli):
    """Bernoulli(logits) whose log-density is written as x l - softplus(l): the same value as
    torch's binary cross-entropy with logits, in two fused passes, and fast under
    ``torch.func.vmap`` too (torch's version has no batching rule and is decomposed into
    many elementwise passes there, 4x slower for a 784-pixel decoder)."""

    def __init__(self, logits: Tensor):
        super().__init__(logits=logits, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return value * self.logits - torch.nn.functional.softplus(self.logits)


class BernoulliLinear(Distribution):
    """Independent Bernoulli pixels whose logits are an affine map of features,
    l = h W^T + b (a decoder's last layer): event shape (D,), batch shape h.shape[:-1].

    The log-density sum_d x_d l_d - softplus(l_d) is computed with
    sum_d x_d l_d = h . (x W) + x . b, a product with the small feature vector, so only
    softplus(l) passes over the large (samples x data x D) logits: a third less memory
    traffic than the plain form, which dominates large-K evaluation of a 784-pixel decoder.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, features: Tensor, weight: Tensor, bias: Tensor):
        self.features, self.weight, self.bias = features, weight, bias
        super().__init__(features.shape[:-1], weight.shape[:1], validate_args=False)

    @property
    def logits(self) -> Tensor:
        return torch.nn.functional.linear(self.features, self.weight, self.bias)

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(torch.Size(sample_shape) + self.mean.shape))

    def log_prob(self, value: Tensor) -> Tensor:
        xl = (self.features * (value @ self.weight)).sum(-1) + (value * self.bias).sum(-1)
        return xl - torch.nn.functional.softplus(self.logits).sum(-1)


def bernoulli_decoder(net: nn.Sequential, z: Tensor) -> BernoulliLinear:
    """p(x | z) for an MLP ``net`` whose last layer gives the Bernoulli logits."""
    return BernoulliLinear(net[:-1](z), net[-1].weight, net[-1].bias)


class LogWeights(NamedTuple):
    """Importance log-weights of K samples per data point, each term shaped (K, B).

    log w = log p(z) + log p(x|z) - log r(z), with r the proposal (the encoder or the prior).
    """

    z: Tensor
    log_pz: Tensor
    log_px_z: Tensor
    log_rz: Tensor

    @property
    def log_w(self) -> Tensor:
        return self.log_pz + self.log_px_z - self.log_rz  # (K, B)


class LatentVariableModel(nn.Module):
    """Base class: subclasses define ``prior``, ``likelihood``, ``encoder`` and may define
    ``log_marginal``/``posterior`` (then they declare ``exact``).

    Capabilities are declared on the class, as ``has_rsample`` is on a torch distribution,
    and read from there by the registry and the planner; ``exact`` may be a property when it
    depends on the size of the model (its docstring then says when).
    """

    #: the kind of latent: "continuous" or "discrete"
    latent_kind: ClassVar[str]
    #: the kinds of data modelled: "continuous", "binary_image"
    data: ClassVar[tuple[str, ...]]
    #: q(z|x) has rsample, so pathwise estimators apply
    reparameterizable: ClassVar[bool] = False
    #: exact log p(x) and p(z|x) (``log_marginal``, ``posterior``)
    exact: bool = False
    #: offers ``relaxed_rsample`` (Concrete / Gumbel-softmax samples)
    relaxable: ClassVar[bool] = False
    #: offers ``straight_through_parts``, its own straight-through estimator (VQ-VAE)
    straight_through: ClassVar[bool] = False
    #: q(z|x) is one-hot (a quantizing encoder), so only K=1 runs
    deterministic: ClassVar[bool] = False
    #: sizes of the latent groups (stochastic layers), for active-unit counts
    latent_sizes: tuple[int, ...] = ()

    def prior(self) -> Distribution:
        raise NotImplementedError

    def likelihood(self, z: Tensor) -> Distribution:
        raise NotImplementedError

    def encoder(self, x: Tensor) -> Distribution:
        raise NotImplementedError

    def log_marginal(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no exact log p(x)")

    def posterior(self, x: Tensor) -> Distribution:
        raise NotImplementedError(f"{type(self).__name__} has no exact posterior")

    def init_from_data(self, x_train: Tensor) -> None:
        """Data-dependent initialisation (e.g. Burda's output bias); default: none."""

    def after_training(self, x_train: Tensor) -> None:
        """Fit parts that need the trained model (e.g. VQ-VAE's sampling prior); default: none."""

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """log q_phi(z|x). Being ``forward`` lets ``torch.func.functional_call`` evaluate it
        with phi swapped for detached copies (see :meth:`encoder_log_prob_stopped`)."""
        return self.encoder(x).log_prob(z)

    # parameter groups --------------------------------------------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        """phi: the inference network's parameters."""
        return [p for p in self.encoder_net.parameters() if p.requires_grad]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """theta: every other trainable parameter."""
        phi = {id(p) for p in self.encoder_net.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in phi]

    def encoder_log_prob_stopped(self, x: Tensor, z: Tensor) -> Tensor:
        """log q(z|x) with gradients stopped at phi but kept through z (STL, DReG)."""
        stopped = {f"encoder_net.{n}": p.detach() for n, p in self.encoder_net.named_parameters()}
        return torch.func.functional_call(self, stopped, (x, z))

    # sampling ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """Ancestral sampling: z ~ p(z), then x ~ p(x|z). Returns (z, x)."""
        z = self.prior().sample((n,))
        return z, self.likelihood(z).sample()


def posterior_kl(model: LatentVariableModel, x: Tensor) -> Tensor:
    """KL(p(z|x) || q(z|x)) per data point, (B,), for models with an exact posterior. For two
    categoricals it is sum_z p log p - p log q (with 0 log 0 = 0), which batches under
    ``torch.func.vmap``; torch's own masks the zero probabilities by boolean indexing, which
    cannot be batched."""
    p, q = model.posterior(x), model.encoder(x)
    if isinstance(p, Categorical) and isinstance(q, Categorical):
        return (torch.special.xlogy(p.probs, p.probs) - p.probs * q.logits).sum(-1)
    return kl_divergence(p, q)


def proposal_distribution(model: LatentVariableModel, proposal: str | Distribution, x: Tensor) -> Distribution:
    """The proposal r(z) of an importance-sampled bound for the batch ``x``: the encoder
    q(z|x) (batch (B,)), the prior p(z) (``"prior"``, the lecture's naive Monte Carlo; batch
    ()), or a given distribution with batch (B,) (e.g. per-datapoint q_i in
    :mod:`lvmbench.measure.amortization`)."""
    if isinstance(proposal, Distribution):
        return proposal
    if proposal == "encoder":
        return model.encoder(x)
    if proposal == "prior":
        return model.prior()
    raise ValueError(f"unknown proposal {proposal!r}")


def draw(d: Distribution, sample_shape: tuple[int, ...] = (), reparam: bool = True) -> Tensor:
    """A sample of ``d`` shaped ``sample_shape + batch + event``: ``d.rsample`` (``reparam``)
    or ``d.sample`` from torch's global generator, or, when a :mod:`lvmbench.noise` source
    is active, the same reparameterization driven by that source's numbers (the trainer's
    per-member streams). Without a path (``reparam=False``) the sample is detached."""
    noise = active_noise()
    if noise is None:
        return d.rsample(sample_shape) if reparam else d.sample(sample_shape)
    z = _draw_with(d, torch.Size(sample_shape), noise)
    return z if reparam else z.detach()


def _draw_with(d: Distribution, shape: torch.Size, noise) -> Tensor:
    """``d``'s sample from the noise source: the reparameterization of each family used here
    (z = loc + scale eps; L eps for a full covariance; transforms of the base sample for a
    flow; u < p for Bernoulli; the Gumbel-max trick for categoricals)."""
    full = shape + d.batch_shape + d.event_shape
    if isinstance(d, Independent):
        return _draw_with(d.base_dist, shape, noise)
    if isinstance(d, MultivariateNormal):
        eps = noise.normal(full, d.loc.dtype, d.loc.device)
        return d.loc + (d._unbroadcasted_scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(d, Normal):
        return d.loc + d.scale * noise.normal(full, d.loc.dtype, d.loc.device)
    if isinstance(d, TransformedDistribution):
        x = _draw_with(d.base_dist, shape, noise)
        for transform in d.transforms:
            x = transform(x)
        return x
    if isinstance(d, Chain):
        return d.draw_with(lambda link, s: draw(link, s, reparam=True), shape)
    if isinstance(d, Bernoulli):
        return (noise.uniform(full, d.probs.dtype, d.probs.device) < d.probs).to(d.probs.dtype)
    if isinstance(d, (Categorical, OneHotCategorical)):
        logits = d.logits
        if isinstance(d, OneHotCategorical):
            logits = d._categorical.logits
        index = (logits + noise.gumbel(shape + logits.shape, logits.dtype, logits.device)).argmax(-1)
        if isinstance(d, OneHotCategorical):
            return torch.nn.functional.one_hot(index, logits.shape[-1]).to(logits.dtype)
        return index
    raise NotImplementedError(f"no noise-driven sampler for {type(d).__name__}")


def log_weights(model: LatentVariableModel, x: Tensor, K: int, proposal: str | Distribution = "encoder",
                rsample: bool = True) -> LogWeights:
    """Draw K samples per data point from the proposal (:func:`proposal_distribution`) and
    return their log-weights. All K samples go through one batched call: z is shaped
    (K, B, ...); a proposal without a batch (the prior) draws K x B samples."""
    r = proposal_distribution(model, proposal, x)
    shape = (K,) if r.batch_shape else (K, x.shape[0])
    z = draw(r, shape, reparam=rsample)
    return LogWeights(z, model.prior().log_prob(z), model.likelihood(z).log_prob(x), r.log_prob(z))


def set_output_bias(layer: nn.Linear, x_train: Tensor) -> None:
    """Burda et al.'s output bias: logit of the mean training pixel, clipped to [0.001, 0.999]."""
    p = x_train.mean(0).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        layer.bias.copy_(torch.logit(p))


def mlp(sizes: Sequence[int], activation: Callable[[], nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers with ``activation`` between them (none after the last),
    Glorot-uniform weights and zero biases (Burda et al. 2016)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(a, b)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class Chain(Distribution):
    """A Markov chain of latent groups as one distribution over z = cat(z_1, ..., z_L).

    The density is r(first) * prod_l r(next | previous) in sampling order. ``links[l]``
    maps the previous group's sample to the next conditional distribution.
    ``reverse=True`` samples z_L first and stores groups in layer order (the prior of a
    hierarchical VAE: p(z_2) p(z_1 | z_2)); otherwise z_1 first (the encoder:
    q(z_1 | x) q(z_2 | z_1)).
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, first: Distribution, links: Sequence[Callable[[Tensor], Distribution]],
                 sizes: Sequence[int], reverse: bool = False):
        self.first, self.links, self.sizes, self.reverse = first, list(links), list(sizes), reverse
        super().__init__(first.batch_shape, torch.Size([sum(sizes)]), validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return self.first.has_rsample

    def _order(self, groups: list[Tensor]) -> list[Tensor]:
        return groups[::-1] if self.reverse else groups

    def draw_with(self, sample: Callable[[Distribution, torch.Size], Tensor], sample_shape: torch.Size) -> Tensor:
        """The chain's sample, each group drawn by ``sample(distribution, shape)`` given the
        previous group."""
        groups = [sample(self.first, sample_shape)]
        for link in self.links:
            groups.append(sample(link(groups[-1]), torch.Size()))
        return torch.cat(self._order(groups), dim=-1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.draw_with(lambda d, s: d.rsample(s), torch.Size(sample_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.draw_with(lambda d, s: d.sample(s), torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        groups = self._order(list(value.split(self.sizes, dim=-1)))
        total = self.first.log_prob(groups[0])
        for link, prev, cur in zip(self.links, groups[:-1], groups[1:]):
            total = total + link(prev).log_prob(cur)
        return total
