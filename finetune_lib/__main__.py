"""`python -m finetune_lib train CONFIG.yaml`: see `finetune_lib.cli`."""

from finetune_lib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
