"""Scale presets of the experiment scripts: data, training budget, measurement sizes and the
models of every experiment, and the measured step times behind ``--plan``'s estimates."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Scale:
    """One preset: data, training budget, logging intervals, measurement sizes, models."""

    name: str
    data: str
    image_size: int  # synthetic images only (Fashion-MNIST is padded to 32, CIFAR-10 is 32)
    synthetic_size: int | None  # training images of the synthetic set (None: its default)
    iterations: int  # CIFAR-style nets (fig1, fig6, fig7, zero_gamma, jacobian: shared runs)
    imagenet_iterations: int  # fig4's ImageNet-style nets
    batch_size: int
    evaluations: int  # test-set passes per run (eval_every = iterations // evaluations)
    records: int  # Recorder steps per run (record_every = iterations // records)
    checkpoints: int  # checkpoints per run (an interrupted run resumes from the last one)
    val_size: int  # held-out training images (the paper: 5000 of CIFAR-10's 50000)
    warmup_iterations: int  # at most this many at lr 0.01 for the models in WARMUP_MODELS
    threads: int | None  # torch threads (None: torch's default)
    measurement_batch: int  # images for records and spectra of trained / initial models
    spectra_samples: int
    spectra_k: int
    spectra_matvecs: int
    spectra_depths: int  # block depths at which cumulative spectra are taken
    models: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "model" or "model:init"


WARMUP_MODELS = ("resnet110",)  # the paper warms ResNet-110 up at lr 0.01 (section 4.2)
INITS = ("he", "zero_gamma", "skipinit", "fixup")
CIFAR_NETS = tuple(f"{kind}{depth}" for kind in ("plain", "resnet") for depth in (20, 32, 44, 56))
PAPER_MODELS = {
    "fig1": ("plain20", "plain56"),
    "fig6": (*CIFAR_NETS, "resnet110"),
    "fig4": ("plain18", "plain34", "resnet18", "resnet34"),
    "fig7": ("plain20", "plain56", "resnet20", "resnet56", "resnet110"),
    "zero_gamma": tuple(f"{model}:{init}" for model in ("resnet56", "resnet110") for init in INITS),
    "jacobian": ("plain20", "resnet20", "plain56", "resnet56", "resnet110"),
    "hessian": ("plain20", "resnet20", "plain56", "resnet56", "resnet110"),  # jacobian's runs
    # fig1's pair, fig6's 20- and 56-layer pairs, the ablation's ResNet-56 he / zero-gamma
    "seed_spread": ("plain20", "resnet20", "plain56", "resnet56", "resnet56:zero_gamma"),
}

# Seconds per SGD step (forward + backward + update, batch 128, 1 x 32 x 32, one torch thread)
# and per 500 evaluated images, measured on this 2-core machine while shared with other
# jobs (load 3-6; wall ~= CPU time). Two threads were slower here (plain20: 0.71-2.9 s per
# step vs 0.44 s: the pool competes with the other processes), so small scale uses one.
STEP_SECONDS = {
    "plain20": (0.44, 0.74), "resnet20": (0.43, 0.70), "plain32": (0.66, 0.75),
    "resnet32": (0.70, 1.23), "plain44": (0.91, 1.41), "resnet44": (0.97, 1.31),
    "plain56": (1.17, 1.37), "resnet56": (1.27, 1.81), "resnet110": (2.45, 3.07),
    "plain18": (0.38, 0.33), "resnet18": (0.39, 0.36), "plain34": (0.72, 0.63),
    "resnet34": (0.73, 0.64),
}  # fmt: skip
# An end-to-end check (12 iterations, one Fashion-MNIST test pass of 10,000 images, two
# Recorder steps, two checkpoints): plain20 22.9 s, resnet56 43.3 s (estimate: 21.3, 51.4).
# Small-scale budget, from ``Experiment.estimate_seconds`` (``--plan`` prints it): 300
# iterations (1000 for ImageNet-style nets) and 5 test passes per run; minutes in the order
# of reports/README.md (later scripts reuse earlier runs) / standalone, training and
# evaluation only (spectra add ~1.5-3 s per depth and sample):
#   fig1 12 / 12, fig6 37 / 48, fig7 17 / 42, zero_gamma 45 / 72, jacobian 0 / 24, fig4 40 / 40
# (zero_gamma and jacobian add ~4-5 min of spectra).
SMALL = Scale(
    name="small", data="fashion-mnist", image_size=32, synthetic_size=None, iterations=300,
    imagenet_iterations=1000, batch_size=128, evaluations=5, records=2, checkpoints=5,
    val_size=0, warmup_iterations=100, threads=1, measurement_batch=128, spectra_samples=2,
    spectra_k=8, spectra_matvecs=256, spectra_depths=6,
    models={
        **PAPER_MODELS,
        "fig6": CIFAR_NETS,  # ResNet-110 at full scale only (fig7 trains it)
        # 45 minutes allow ResNet-110 with he and zero_gamma only (see the budget above)
        "zero_gamma": (*(f"resnet56:{i}" for i in INITS), "resnet110:he", "resnet110:zero_gamma"),
        "jacobian": ("plain20", "resnet20", "plain56", "resnet56"),
        "hessian": ("plain20", "resnet20", "plain56", "resnet56"),
    },
)  # fmt: skip
SCALES = {
    "smoke": replace(
        SMALL, name="smoke", data="synthetic", image_size=8, synthetic_size=256, iterations=6,
        imagenet_iterations=6, batch_size=16, evaluations=2, checkpoints=1,
        warmup_iterations=2, measurement_batch=8, spectra_samples=1, spectra_k=2,
        spectra_matvecs=24, spectra_depths=3,
        # ResNet-110 with 4 inits would take more than 15 s at smoke scale
        models={**SMALL.models,
                "zero_gamma": tuple(f"{m}:{i}" for m in ("resnet20", "resnet56") for i in INITS),
                # the 56-layer Hessians are 80% of the smoke run's time and pin nothing more
                "hessian": ("plain20", "resnet20")},
    ),
    "small": SMALL,
    "full": replace(
        SMALL, name="full", data="cifar10", iterations=64_000, imagenet_iterations=64_000,
        evaluations=64, records=16, checkpoints=64, val_size=5000, warmup_iterations=400,
        threads=None, spectra_samples=4, spectra_k=16, spectra_depths=10, models=PAPER_MODELS,
    ),
}  # fmt: skip
