"""The demo: `python -m finetune_lib.demo` (or `make demo`) fine-tunes all-MiniLM-L6-v2 on generated
customer-support messages, through every class of the library."""
