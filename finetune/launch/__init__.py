"""Multi-node launch: preflight checks over ssh (`preflight`, with `hostprobe` run on each host), the hostfile
and its filters (`hostfile`), and DeepSpeed's env file for the ranks (`env_file`); then DeepSpeed's own launcher.

    python -m finetune.launch --hostfile HOSTFILE [--check-only] -- finetune/sft.py ARGS...
"""
