"""nnunet-qpg: Quantum Parameter Generation (HQC-TF) for nnU-Net v2 convolutions."""

__version__ = "0.1.0"
