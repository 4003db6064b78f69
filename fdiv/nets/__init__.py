"""Flax NNX networks: raw denoiser networks, EDM wrappers, discriminator head, classifier.

- `MLP`: noise-conditioned residual MLP for vector data.
- `UNet`: small noise-conditioned U-Net for 8x8 / 28x28 images.
- `EDMDenoiser`: EDM preconditioning around a raw network (docs/reference.md section 6).
- `OneStepGenerator`: ``G(z) = D_gen(sigma_max z; sigma_max)`` initialised from a teacher.
- `DiscriminatorHead`: log density-ratio logit from denoiser features (docs/reference.md section 4).
- `Classifier`: image classifier (feature extractor for Frechet distances).
- `fourier_embedding`: sinusoidal embedding of the noise level ``c_noise``.
"""

from fdiv.nets.classifier import Classifier
from fdiv.nets.discriminator import DiscriminatorHead
from fdiv.nets.edm import EDMDenoiser, OneStepGenerator
from fdiv.nets.embedding import fourier_embedding
from fdiv.nets.mlp import MLP
from fdiv.nets.unet import UNet

__all__ = [
    "MLP",
    "UNet",
    "EDMDenoiser",
    "OneStepGenerator",
    "DiscriminatorHead",
    "Classifier",
    "fourier_embedding",
]
from fdiv.nets.llama import GGUFTokenizer, KVCache, Llama, LlamaConfig, from_gguf
from fdiv.nets.sampling import Generation, generate, sampling_log_probs

__all__ += [
    "Llama",
    "LlamaConfig",
    "KVCache",
    "GGUFTokenizer",
    "from_gguf",
    "generate",
    "Generation",
    "sampling_log_probs",
]
