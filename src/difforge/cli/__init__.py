"""What the Hydra entry points in ``src/`` run: one function per command, given the composed config."""
