"""Sub-commands of the `nnunet-qpg` command line, one module each (see nnunet_qpg/cli.py)."""
