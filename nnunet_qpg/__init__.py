"""nnunet-qpg: Quantum Parameter Generation (HQC-TF, Sun et al., Sci. Rep. 2026) for nnU-Net v2 convolutions.

    from nnunet_qpg import QPGConfig, apply_qpg, bake
    report = apply_qpg(network, QPGConfig(targets=("decoder.seg_layers.*",), mode="replace", post="lpp", blocks=1))
    print(report.table())
    ...train...
    bake(network)  # plain convolutions carrying the generated kernels

Circuits in the data path, for comparison (SPEC section 8): ``QuantumLayer(in_features, qubits=5, circuits=5)``.
"""

__version__ = "0.1.0"

_LAZY = {
    "QPGConfig": "nnunet_qpg.config",
    "NoiseModel": "nnunet_qpg.simulator.noise",
    "apply_qpg": "nnunet_qpg.surgery",
    "bake": "nnunet_qpg.surgery",
    "find_layers": "nnunet_qpg.surgery",
    "mark_only_adapters_trainable": "nnunet_qpg.surgery",
    "QPGConv": "nnunet_qpg.layers",
    "QPGAConv": "nnunet_qpg.layers",
    "ConvLoRA": "nnunet_qpg.layers",
    "GeneratedKernelConv": "nnunet_qpg.layers",
    "QPGReport": "nnunet_qpg.accounting",
    "QuantumLayer": "nnunet_qpg.quantum_layer",
    "QuantumBlockConfig": "nnunet_qpg.quantum_bottleneck",
    "simulate_vqcs": "nnunet_qpg.simulator",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    # Lazy so that `nnunet-qpg --help` and trainer discovery do not pay for importing torch twice.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnunet_qpg' has no attribute {name!r}")
