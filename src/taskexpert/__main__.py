"""`python -m taskexpert`: the CLI, so launchers that take a module run it
(`accelerate launch -m taskexpert train-moe ...`, `torchrun -m taskexpert ...`)."""

from taskexpert.cli import main

if __name__ == "__main__":
    main()
